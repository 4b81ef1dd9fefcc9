"""Exact REML/ML fits of nested random-intercept models without forming the n x n covariance.

The pipeline's outcome models are linear mixed models whose random effects are intercepts for
nested units, outermost first (clinic, therapist, patient), optionally with an independent
"unit x time point" intercept for the outer levels (lme4: ``(1|therapist:time)``)::

    y = X beta + sum_k Z_k u_k + e,   u_k ~ N(0, s2_k I),   e ~ N(0, s2 I).

statsmodels' ``MixedLM`` loops over groups in Python and is two orders of magnitude slower
than lme4 on cohorts of 10^4-10^6 patients. This module evaluates the *same* profiled
criterion as lme4 from sufficient statistics, so one evaluation costs O(number of therapists)
and not O(n):

- the innermost level (the patient) has covariance ``R_i = I + g 11'`` (relative to the
  residual variance) whose inverse and determinant depend only on the patient's number of
  rows, so ``A' R^-1 A`` (``A = [time indicators, X, y]``) is a fixed combination of
  precomputed sums grouped by patient size;
- every outer level has a T-dimensional effect per unit (T time points) with covariance
  ``g_int J + g_time I``; the Woodbury identity turns the inner inverse into the outer one
  with one small T x T system per unit, solved for all units at once with batched numpy;
- beta and the residual variance are profiled out; the relative standard deviations
  (lme4's ``theta``, bounded below by 0 so singular fits land exactly on the boundary) are
  optimised with L-BFGS-B and polished with projected Newton steps.

The criterion is lme4's: ``log det(V0) + log det(X'V0^-1 X) + (n-p)(1 + log(2 pi r2/(n-p)))``
for REML (``V0`` the marginal covariance divided by the residual variance, ``r2`` the
generalised residual sum of squares), so ``loglike`` equals R's ``logLik()`` of the same fit.

:class:`NestedDesign` has the method names of
:class:`trial_analysis.models.lmm_inference.MixedDesign`
(``pieces``, ``deviance_varpar``, ``cov_beta``), so Satterthwaite inference can run on it
directly: ``SatterthwaiteInference.from_fit(result.design, result.theta, result.sigma)``.
"""

from __future__ import annotations

import time as _time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import optimize

from trial_analysis.errors import DataError

FIT_PATH = "fast_nested"
# lme4's isSingular() tolerance on theta (relative standard deviations).
SINGULAR_TOL = 1e-4
# Convergence: Newton decrement (deviance units) and relative step of theta.
DECREMENT_TOL = 1e-9
STEP_TOL = 1e-10
MAX_POLISH_STEPS = 50
# Results of NestedDesign.pieces kept for repeated theta (oldest dropped first).
PIECES_CACHE_SIZE = 64
MODEL_INPUT = "model input"


@dataclass(frozen=True)
class _Level:
    """One nesting level: its units, their parents and which random effects it carries."""

    name: str
    n_units: int
    parent: np.ndarray | None  # unit -> parent unit at the next outer level (sorted)
    intercept_index: int  # position of its intercept component in theta
    time_index: int | None  # position of its "level:time" component, if any


def _lambda_matrix(theta_int: float, theta_time: float, n_time: int) -> np.ndarray:
    """Symmetric square root of ``theta_int^2 J + theta_time^2 I`` (T x T).

    ``(a I + c J)^2 = a^2 I + (2ac + c^2 T) J``; with ``a = theta_time`` the intercept part
    gives ``c = theta_int^2 / (a + sqrt(a^2 + T theta_int^2))`` (the stable root).
    """
    a = theta_time
    root = np.sqrt(a * a + n_time * theta_int * theta_int)
    c = theta_int * theta_int / (a + root) if root > 0 else 0.0
    return a * np.eye(n_time) + c * np.ones((n_time, n_time))


class NestedDesign:
    """Sufficient statistics of a nested random-intercept model and its profiled criterion.

    Parameters
    ----------
    y : array (n,)
        Response.
    X : array (n, p)
        Fixed-effects design (full column rank).
    levels : mapping of str to array (n,)
        Grouping identifiers, outermost first (``{"therapist": ..., "patient": ...}``).
        Units are nested by construction: the patient unit is the (therapist, patient) pair,
        as lme4's ``therapist/patient``.
    time : array (n,) or None
        Time point of each row; needed when ``time_effects`` is not empty.
    time_effects : sequence of str
        Levels that also get a "level x time point" random intercept.
    reml : bool
        Default criterion for :meth:`deviance_varpar` (REML if true, else ML).
    column_names : sequence of str, optional
        Names of the columns of ``X``.

    Notes
    -----
    Component order in ``theta`` and ``component_names``: for each level outermost first,
    its intercept then its time component (``"therapist"``, ``"therapist:time"``, ...).
    """

    def __init__(
        self,
        y: np.ndarray,
        X: np.ndarray,
        levels: Mapping[str, Sequence | np.ndarray],
        time: Sequence | np.ndarray | None = None,
        time_effects: Sequence[str] = (),
        reml: bool = True,
        column_names: Sequence[str] | None = None,
    ) -> None:
        y = np.asarray(y, dtype=float).ravel()
        X = np.asarray(X, dtype=float)
        if X.ndim == 1:
            X = X[:, None]
        n, p = X.shape
        self._check_inputs(y, X, levels, time, time_effects, column_names)
        self.n, self.p = n, p
        self.reml = bool(reml)
        self._pieces_cache: dict[bytes, dict[str, float | np.ndarray]] = {}
        self.column_names = (list(column_names) if column_names is not None
                             else [f"x{j}" for j in range(p)])

        if time is not None:
            time_codes, time_labels = pd.factorize(np.asarray(time), sort=True)
            if np.any(time_codes < 0):
                raise DataError(MODEL_INPUT, "time point is missing", column="time",
                                rows=(np.flatnonzero(time_codes < 0) + 1)[:5])
        else:
            time_codes, time_labels = np.zeros(n, dtype=np.int64), np.asarray([0])
        self.time_labels = list(time_labels)
        T = len(time_labels)
        self.n_time = T

        # Center the non-intercept columns and y when X has an intercept: X -> X U with U
        # unit triangular, so log det(X'V^-1 X) and r2 are unchanged but the normal
        # equations lose the cancellation between large means.
        ones = np.flatnonzero(np.all(X == 1.0, axis=0))
        self._intercept = int(ones[0]) if len(ones) else None
        self._x_shift = np.zeros(p)
        self._y_shift = 0.0
        if self._intercept is not None:
            self._x_shift = X.mean(axis=0)
            self._x_shift[self._intercept] = 0.0
            self._y_shift = float(y.mean())
            X = X - self._x_shift
            y = y - self._y_shift

        # A = [time indicators, X, y]: every quantity below is a block of A' V0^-1 A.
        m = T + p + 1
        self._m = m
        A = np.empty((n, m), order="F")  # columns contiguous for bincount
        A[:, :T] = 0.0
        A[np.arange(n), time_codes] = 1.0
        A[:, T:T + p] = X
        A[:, -1] = y
        self._AtA = A.T @ A

        self._levels, self.component_names = self._build_levels(levels, time_effects, n)
        inner = self._levels[-1]
        unit = self._unit_codes_inner
        self._inner_closed_form = inner.time_index is None
        if self._inner_closed_form:
            self._prepare_closed_form(A, unit, time_codes, inner)
        else:
            # Innermost level with a time effect: generic Woodbury from R = I.
            key = unit * T + time_codes
            self._Q_inner = np.ascontiguousarray(self._grouped_sums(
                A, key, inner.n_units * T).reshape(inner.n_units, T, m).transpose(1, 0, 2))
        del A

    # ------------------------------------------------------------------ construction
    @staticmethod
    def _check_inputs(y, X, levels, time, time_effects, column_names) -> None:
        n = len(y)
        if X.ndim != 2 or X.shape[0] != n:
            raise ValueError(f"X must have {n} rows like y, got shape {X.shape}")
        if not levels:
            raise ValueError("at least one grouping level is needed")
        for name, values in levels.items():
            if len(values) != n:
                raise ValueError(f"level {name!r} has {len(values)} values, y has {n}")
        if time is not None and len(time) != n:
            raise ValueError(f"time has {len(time)} values, y has {n}")
        unknown = [t for t in time_effects if t not in levels]
        if unknown:
            raise ValueError(f"time_effects {unknown} are not among the levels {list(levels)}")
        if time_effects and time is None:
            raise ValueError("time_effects need the time argument")
        if column_names is not None and len(column_names) != X.shape[1]:
            raise ValueError(f"{len(column_names)} column names for {X.shape[1]} columns")
        bad_y = np.flatnonzero(~np.isfinite(y))
        if len(bad_y):
            raise DataError(MODEL_INPUT, "the response must be finite (drop missing rows "
                            "before fitting)", column="y", rows=bad_y + 1)
        bad_x = np.flatnonzero(~np.all(np.isfinite(X), axis=1))
        if len(bad_x):
            raise DataError(MODEL_INPUT, "fixed-effect covariates must be finite",
                            column="X", rows=bad_x + 1)
        if n <= X.shape[1]:
            raise DataError(MODEL_INPUT, f"{n} rows cannot estimate {X.shape[1]} fixed effects")
        # Rank from the column-scaled Gram matrix: an SVD of X costs more than a whole fit at
        # 10^6 rows, and exact collinearity shows up as a (numerically) zero eigenvalue here.
        gram = X.T @ X
        scale = np.sqrt(np.diag(gram))
        if np.any(scale == 0):
            raise DataError(MODEL_INPUT, "a fixed-effect column is all zero", column="X")
        eig = np.linalg.eigvalsh(gram / np.outer(scale, scale))
        rank = int(np.sum(eig > 1e-12 * eig.max()))
        if rank < X.shape[1]:
            raise DataError(MODEL_INPUT, f"the fixed-effects design has rank {rank} < "
                            f"{X.shape[1]} columns (collinear covariates)", column="X",
                            hint="drop a redundant covariate or a level with no patients")

    def _build_levels(self, levels, time_effects, n):
        built: list[_Level] = []
        names: list[str] = []
        prev_codes = None
        for name, values in levels.items():
            raw, uniques = pd.factorize(np.asarray(values))
            if np.any(raw < 0):
                raise DataError(MODEL_INPUT, f"grouping identifier {name!r} is missing",
                                column=name, rows=(np.flatnonzero(raw < 0) + 1)[:5])
            if prev_codes is None:
                key = raw.astype(np.int64)
            else:
                key = prev_codes.astype(np.int64) * max(len(uniques), 1) + raw
            # sort=True orders units by their parent code, so siblings are contiguous.
            codes, keys = pd.factorize(key, sort=True)
            n_units = len(keys)
            parent = None
            if prev_codes is not None:
                parent = np.empty(n_units, dtype=np.int64)
                parent[codes] = prev_codes
            intercept_index = len(names)
            names.append(name)
            time_index = None
            if name in time_effects:
                time_index = len(names)
                names.append(f"{name}:time")
            built.append(_Level(name, n_units, parent, intercept_index, time_index))
            prev_codes = codes
        self._unit_codes_inner = prev_codes
        return built, names

    @staticmethod
    def _grouped_sums(A: np.ndarray, key: np.ndarray, n_groups: int) -> np.ndarray:
        """Column sums of ``A`` within groups ``key`` (bincount: no Python loop over groups)."""
        out = np.empty((n_groups, A.shape[1]))
        for j in range(A.shape[1]):
            out[:, j] = np.bincount(key, weights=A[:, j], minlength=n_groups)
        return out

    def _prepare_closed_form(self, A, unit, time_codes, inner: _Level) -> None:
        """Per-size sums for ``R_i^-1 = I - g/(1 + n_i g) 11'`` at the innermost level."""
        T, m = self.n_time, self._m
        S = self._grouped_sums(A, unit, inner.n_units)  # per-unit row sums of A
        sizes = np.bincount(unit, minlength=inner.n_units)
        self._size_values, size_index = np.unique(sizes, return_inverse=True)
        self._size_counts = np.bincount(size_index).astype(float)
        n_sizes = len(self._size_values)
        # Global: sum over units of a given size of S_i S_i'.
        self._D = np.empty((n_sizes, m, m))
        for s in range(n_sizes):  # loop over distinct patient sizes (a handful), not units
            S_s = S[size_index == s]
            self._D[s] = S_s.T @ S_s
        self._has_parent = inner.parent is not None
        if not self._has_parent:
            return
        parent_level = self._levels[-2]
        P = parent_level.n_units
        row_parent = inner.parent[unit]
        # Z_t' A per parent unit (P, T, m) and, per size, sum of s_i S_i' with s_i the
        # unit's time counts (the first T entries of S_i).
        self._Cq = np.ascontiguousarray(self._grouped_sums(
            A, row_parent * T + time_codes, P * T).reshape(P, T, m).transpose(1, 0, 2))
        key = size_index * P + inner.parent
        Dq = np.empty((n_sizes, T, P, m))
        for t in range(T):
            for j in range(m):
                Dq[:, t, :, j] = np.bincount(key, weights=S[:, t] * S[:, j],
                                             minlength=n_sizes * P).reshape(n_sizes, P)
        # Flattened so that the size-weighted sum is one matrix-vector product.
        self._Dq = Dq.reshape(n_sizes, -1)

    # ------------------------------------------------------------------ criterion
    @property
    def n_components(self) -> int:
        return len(self.component_names)

    @staticmethod
    def _woodbury_level(Q: np.ndarray, Lam: np.ndarray, need_next: bool):
        """Add one level's T-dimensional effect (covariance Lam Lam) on top of ``R``.

        ``Q`` (T, units, m) holds ``Z' R^-1 A`` per unit, time point first so that every
        operation below is an elementwise or BLAS operation over all units at once (numpy's
        batched small-matrix routines cost a LAPACK call per unit). Returns the
        log-determinant increment, the correction to subtract from ``A' R^-1 A`` and, if
        asked, ``Z' V^-1 A``.
        """
        T = Q.shape[0]
        # LQ[t] = sum_s Lam[t, s] Q[s]: one BLAS call on the flattened units.
        LQ = (Lam @ Q.reshape(T, -1)).reshape(Q.shape)
        # K = I + Lam M Lam per unit, M = Q[:, :, :T]; stored as K[t][r] arrays over units.
        LML = LQ[:, :, :T] @ Lam  # (T, U, T): LML[t, u, r]
        if T == 1:
            k = 1.0 + LML[0, :, 0]
            logdet = float(np.sum(np.log(k)))
            Kinv = (1.0 / k)[None, None, :]
        elif T == 2:
            a, b = 1.0 + LML[0, :, 0], LML[0, :, 1]
            c, d = LML[1, :, 0], 1.0 + LML[1, :, 1]
            det = a * d - b * c
            logdet = float(np.sum(np.log(det)))
            Kinv = np.stack([np.stack([d, -b]), np.stack([-c, a])]) / det
        else:
            K = LML.transpose(1, 0, 2).copy()
            K[:, np.arange(T), np.arange(T)] += 1.0
            sign, logdets = np.linalg.slogdet(K)
            if np.any(sign <= 0):
                raise np.linalg.LinAlgError("level covariance update is not positive definite")
            logdet = float(np.sum(logdets))
            Kinv = np.linalg.inv(K).transpose(1, 2, 0)
        # W = K^-1 LQ per unit.
        W = np.einsum("tru,rum->tum", Kinv, LQ, optimize=False) if T > 2 else np.stack(
            [sum(Kinv[t, r][:, None] * LQ[r] for r in range(T)) for t in range(T)])
        correction = sum(LQ[t][:, T:].T @ W[t][:, T:] for t in range(T))
        Q_next = None
        if need_next:
            MLam = Q[:, :, :T] @ Lam  # (T, U, T): (M Lam)[t, s] per unit
            Q_next = Q - np.stack([sum(MLam[t, :, s][:, None] * W[s] for s in range(T))
                                   for t in range(T)])
        return logdet, correction, Q_next

    @staticmethod
    def _sum_to_parent(Q: np.ndarray, parent: np.ndarray) -> np.ndarray:
        starts = np.flatnonzero(np.r_[True, parent[1:] != parent[:-1]])
        return np.add.reduceat(Q, starts, axis=1)

    def _quadratic_forms(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        """``log det V0`` and ``[X y]' V0^-1 [X y]`` at relative SDs ``theta``."""
        T = self.n_time
        levels = self._levels
        inner = levels[-1]
        if self._inner_closed_form:
            g = float(theta[inner.intercept_index]) ** 2
            w = g / (1.0 + self._size_values * g)
            logdet = float(np.sum(self._size_counts * np.log1p(self._size_values * g)))
            AVA = self._AtA[T:, T:] - np.einsum("s,smk->mk", w, self._D[:, T:, T:])
            Q = None
            if self._has_parent:
                # A loop over the few distinct patient sizes beats BLAS gemv on this shape.
                Q = self._Cq.copy()
                flat = Q.reshape(-1)
                for s_index, w_s in enumerate(w):
                    flat -= w_s * self._Dq[s_index]
            remaining = levels[:-1]
        else:
            logdet, AVA, Q = 0.0, self._AtA[T:, T:].copy(), self._Q_inner
            remaining = levels
        for k in range(len(remaining) - 1, -1, -1):
            level = remaining[k]
            theta_time = float(theta[level.time_index]) if level.time_index is not None else 0.0
            Lam = _lambda_matrix(float(theta[level.intercept_index]), theta_time, T)
            dlog, corr, Q_next = self._woodbury_level(Q, Lam, need_next=k > 0)
            logdet += dlog
            AVA = AVA - corr
            if k > 0:
                Q = self._sum_to_parent(Q_next, level.parent)
        return logdet, AVA

    def _solve_fixed(self, theta: np.ndarray, need_inverse: bool):
        """GLS solve for beta at ``theta`` on the centred scale (no covariance unless asked)."""
        theta = np.asarray(theta, dtype=float)
        if theta.shape != (self.n_components,):
            raise ValueError(f"theta must have {self.n_components} entries "
                             f"({self.component_names}), got {theta.shape}")
        p = self.p
        logdet, AVA = self._quadratic_forms(np.abs(theta))
        XVX = (AVA[:p, :p] + AVA[:p, :p].T) / 2
        XVy = AVA[:p, p]
        L = np.linalg.cholesky(XVX)
        logdet_RX = 2.0 * float(np.sum(np.log(np.diag(L))))
        beta_c = np.linalg.solve(XVX, XVy)
        r2 = float(AVA[p, p]) - float(beta_c @ XVy)
        XVX_inv = np.linalg.inv(XVX) if need_inverse else None
        return logdet, logdet_RX, max(r2, 0.0), beta_c, XVX_inv

    def pieces(self, theta: np.ndarray) -> dict[str, float | np.ndarray]:
        """Penalised least-squares pieces at relative standard deviations ``theta``.

        Same keys as :meth:`trial_analysis.models.lmm_inference.MixedDesign.pieces`:
        ``logdet_L`` (log det V0 = lme4's log|L|^2), ``logdet_RX`` (log det X'V0^-1 X),
        ``r2`` (generalised residual sum of squares), ``beta`` and ``XtViX_inv``.

        The last :data:`PIECES_CACHE_SIZE` results are kept (arrays read-only): the
        Satterthwaite derivatives move ``sigma`` with ``theta`` fixed, or revisit the same
        ``theta``, in about a third of their evaluations, and the pieces depend on ``theta``
        only. A repeated ``theta`` returns the very same numbers, so results are unchanged.
        """
        key = np.asarray(theta, dtype=float).tobytes()
        cached = self._pieces_cache.get(key)
        if cached is not None:
            return cached
        result = self._compute_pieces(theta)
        for value in result.values():
            if isinstance(value, np.ndarray):
                value.setflags(write=False)
        if len(self._pieces_cache) >= PIECES_CACHE_SIZE:
            self._pieces_cache.pop(next(iter(self._pieces_cache)))
        self._pieces_cache[key] = result
        return result

    def _compute_pieces(self, theta: np.ndarray) -> dict[str, float | np.ndarray]:
        logdet, logdet_RX, r2, beta_c, XVX_inv_c = self._solve_fixed(theta, need_inverse=True)
        p = self.p
        # Undo the centring: beta = U (beta_c + ybar e_intercept), cov = U cov_c U'.
        if self._intercept is not None:
            beta_c = beta_c.copy()
            beta_c[self._intercept] += self._y_shift
            U = np.eye(p)
            U[self._intercept, :] -= self._x_shift
            beta = U @ beta_c
            XVX_inv = U @ XVX_inv_c @ U.T
        else:
            beta, XVX_inv = beta_c, XVX_inv_c
        return {"logdet_L": logdet, "logdet_RX": logdet_RX, "r2": r2,
                "beta": beta, "XtViX_inv": (XVX_inv + XVX_inv.T) / 2}

    def profiled_deviance(self, theta: np.ndarray, reml: bool | None = None) -> float:
        """lme4's profiled deviance (-2 log-likelihood, beta and sigma profiled out)."""
        reml = self.reml if reml is None else reml
        logdet, logdet_RX, r2, _, _ = self._solve_fixed(theta, need_inverse=False)
        if r2 <= 0:
            return np.inf
        if reml:
            dof = self.n - self.p
            return float(logdet + logdet_RX + dof * (1 + np.log(2 * np.pi * r2 / dof)))
        return float(logdet + self.n * (1 + np.log(2 * np.pi * r2 / self.n)))

    def sigma2_at(self, theta: np.ndarray, reml: bool | None = None) -> float:
        """Profiled residual variance at ``theta``."""
        reml = self.reml if reml is None else reml
        return float(self.pieces(theta)["r2"] / (self.n - self.p if reml else self.n))

    def deviance_varpar(self, varpar: np.ndarray, reml: bool | None = None) -> float:
        """lmerTest's ``devfun_vp``: the deviance at ``varpar = (theta, sigma)``."""
        reml = self.reml if reml is None else reml
        varpar = np.asarray(varpar, dtype=float)
        theta, sigma = varpar[:-1], float(varpar[-1])
        pc = self.pieces(theta)
        s2 = sigma**2
        if reml:
            return float(pc["logdet_L"] + pc["logdet_RX"] + pc["r2"] / s2
                         + (self.n - self.p) * np.log(2 * np.pi * s2))
        return float(pc["logdet_L"] + pc["r2"] / s2 + self.n * np.log(2 * np.pi * s2))

    def cov_beta(self, varpar: np.ndarray) -> np.ndarray:
        """``cov(beta) = sigma^2 (X'V0^-1 X)^-1`` at ``varpar = (theta, sigma)``."""
        varpar = np.asarray(varpar, dtype=float)
        return float(varpar[-1]) ** 2 * self.pieces(varpar[:-1])["XtViX_inv"]

    def varpar_from_variances(self, variances: np.ndarray | Mapping[str, float]) -> np.ndarray:
        """Convert natural-scale variances (components..., residual) to ``(theta, sigma)``."""
        if isinstance(variances, Mapping):
            variances = [variances[name] for name in [*self.component_names, "residual"]]
        v = np.asarray(variances, dtype=float)
        if v.shape != (self.n_components + 1,):
            raise ValueError(f"expected {self.n_components + 1} variances "
                             f"({[*self.component_names, 'residual']}), got {v.shape}")
        s2 = v[-1]
        return np.append(np.sqrt(np.maximum(v[:-1], 0.0) / s2), np.sqrt(s2))


# ---------------------------------------------------------------------- optimisation
def _gradient(f, x: np.ndarray, f0: float) -> np.ndarray:
    """Central-difference gradient (the deviance is even in each theta, so x < 0 is fine)."""
    g = np.empty_like(x)
    for i in range(len(x)):
        h = 1e-5 * max(abs(x[i]), 0.1)
        e = np.zeros_like(x)
        e[i] = h
        g[i] = (f(x + e) - f(x - e)) / (2 * h)
    return g


def _gradient_hessian(f, x: np.ndarray, f0: float) -> tuple[np.ndarray, np.ndarray]:
    """Central-difference gradient and Hessian of ``f`` from one stencil."""
    k = len(x)
    h = 1e-4 * np.maximum(np.abs(x), 0.1)
    g = np.empty(k)
    H = np.empty((k, k))
    for i in range(k):
        ei = np.zeros(k)
        ei[i] = h[i]
        f_plus, f_minus = f(x + ei), f(x - ei)
        g[i] = (f_plus - f_minus) / (2 * h[i])
        H[i, i] = (f_plus - 2 * f0 + f_minus) / h[i] ** 2
        for j in range(i):
            ej = np.zeros(k)
            ej[j] = h[j]
            H[i, j] = H[j, i] = (f(x + ei + ej) - f(x + ei - ej) - f(x - ei + ej)
                                 + f(x - ei - ej)) / (4 * h[i] * h[j])
    return g, H


@dataclass
class _OptimResult:
    theta: np.ndarray
    deviance: float
    converged: bool
    n_iter: int
    messages: list[str]


def _optimise(f, k: int, start: np.ndarray | None = None) -> _OptimResult:
    """Minimise the profiled deviance over theta >= 0.

    The deviance depends on theta only through theta^2, so it is even in every component:
    minimising over all of R^k and taking absolute values is the bounded problem, and the
    boundary theta_i = 0 is an ordinary stationary point (no projected-gradient special
    cases). L-BFGS does the bulk of the work; Newton steps with a finite-difference Hessian
    (eigenvalues made positive if needed, backtracking line search) polish the optimum until
    the Newton decrement and the relative step are negligible.
    """
    messages: list[str] = []
    x = np.full(k, 1.0) if start is None else np.asarray(start, dtype=float)

    def fg(z):
        f0 = f(z)
        return f0, _gradient(f, z, f0)

    res = optimize.minimize(fg, x, jac=True, method="L-BFGS-B",
                            options={"maxiter": 1000, "ftol": 1e-14, "gtol": 1e-7})
    x = np.asarray(res.x, dtype=float)
    n_iter = int(res.nit)
    fx = f(x)
    converged = False
    positive_definite = False
    for _ in range(MAX_POLISH_STEPS):
        n_iter += 1
        g, H = _gradient_hessian(f, x, fx)
        evals, evecs = np.linalg.eigh((H + H.T) / 2)
        positive_definite = bool(evals.min() > 0)
        floor = 1e-8 * max(float(np.abs(evals).max()), 1.0)
        d = -evecs @ ((evecs.T @ g) / np.maximum(np.abs(evals), floor))
        decrement = float(-g @ d)
        if decrement < DECREMENT_TOL and np.all(np.abs(d) <= 1e-7 * (1 + np.abs(x))):
            converged = positive_definite
            break
        t = 1.0
        improved = False
        while t > 1e-10:
            x_new = x + t * d
            f_new = f(x_new)
            if f_new <= fx:
                improved = True
                break
            t /= 2
        if not improved:
            # No decrease along the Newton direction: at the optimum to numerical precision
            # if the decrement is already tiny.
            converged = positive_definite and decrement < 1e-6
            if not converged:
                messages.append(f"line search failed with Newton decrement {decrement:.2e}")
            break
        rel_change = float(np.max(np.abs(x_new - x) / (1 + np.abs(x))))
        x, fx = x_new, f_new
        if rel_change < STEP_TOL and decrement < DECREMENT_TOL:
            converged = positive_definite
            break
    else:
        messages.append(f"no convergence after {MAX_POLISH_STEPS} Newton polishing steps")
    if not positive_definite and not messages:
        messages.append("the deviance Hessian is not positive definite at the optimum")
    x = np.abs(x)
    # Components whose removal does not increase the deviance are on the boundary: report
    # exact zeros there, as lme4's bounded optimiser does.
    for i in np.argsort(x):
        if 0 < x[i] < SINGULAR_TOL:
            trial = x.copy()
            trial[i] = 0.0
            f_trial = f(trial)
            if f_trial <= fx + 1e-10 * max(1.0, abs(fx)):
                x, fx = trial, min(f_trial, fx)
    return _OptimResult(theta=x, deviance=fx, converged=converged, n_iter=n_iter,
                        messages=messages)


# ---------------------------------------------------------------------- result
@dataclass
class NestedLMMResult:
    """A fitted nested random-intercept model (see :func:`fit_nested_lmm`).

    Attributes
    ----------
    fixed_effects : Series
        Fixed-effect estimates, indexed by column name.
    cov_fixed : DataFrame
        Their covariance matrix.
    std_errors : Series
        Their standard errors.
    variance_components : dict
        Variance per random component (``"therapist"``, ``"therapist:time"``, ``"patient"``,
        ...) and ``"residual"``.
    theta : ndarray
        Relative standard deviations (lme4's ``getME(fit, "theta")``), component order.
    sigma : float
        Residual standard deviation.
    loglike : float
        REML or ML log-likelihood on lme4's scale (``logLik()``).
    deviance_value : float
        ``-2 loglike`` (lme4's ``REMLcrit()`` or ``deviance()``).
    """

    fixed_effects: pd.Series
    cov_fixed: pd.DataFrame
    std_errors: pd.Series
    variance_components: dict[str, float]
    theta: np.ndarray
    sigma: float
    loglike: float
    deviance_value: float
    reml: bool
    converged: bool
    n_iter: int
    singular: bool
    warnings: list[str]
    n_observations: int
    n_units: dict[str, int]
    fit_seconds: float
    design: NestedDesign = field(repr=False)
    fit_path: str = FIT_PATH

    @property
    def method(self) -> str:
        return "REML" if self.reml else "ML"

    def deviance(self, variances: np.ndarray | Mapping[str, float]) -> float:
        """REML (or ML) deviance at natural-scale variances (components..., residual).

        Equals ``-2 loglike`` at the fitted variances; this is the unprofiled criterion whose
        Hessian gives the asymptotic covariance of the variance parameters.
        """
        d = self.design
        v = _variance_vector(d, variances)
        varpar = np.append(np.sqrt(np.maximum(v[:-1], 0.0) / v[-1]), np.sqrt(v[-1]))
        return d.deviance_varpar(varpar, reml=self.reml)

    def cov_fixed_at(self, variances: np.ndarray | Mapping[str, float]) -> np.ndarray:
        """``cov(beta) = (X' V^-1 X)^-1`` at natural-scale variances (components..., residual)."""
        d = self.design
        v = _variance_vector(d, variances)
        s2 = v[-1]
        return s2 * d.pieces(np.sqrt(np.maximum(v[:-1], 0.0) / s2))["XtViX_inv"]

    @property
    def variance_vector(self) -> np.ndarray:
        """Fitted variances in the order of :meth:`deviance` (components..., residual)."""
        return np.array(list(self.variance_components.values()))

    def to_frame(self) -> pd.DataFrame:
        """Tidy table: one row per fixed effect and per variance component.

        Columns ``kind`` (``fixed`` / ``variance``), ``term``, ``estimate``, ``std_error``
        (missing for variances).
        """
        fixed = pd.DataFrame({"kind": "fixed", "term": self.fixed_effects.index,
                              "estimate": self.fixed_effects.to_numpy(),
                              "std_error": self.std_errors.to_numpy()})
        var = pd.DataFrame({"kind": "variance", "term": list(self.variance_components),
                            "estimate": list(self.variance_components.values()),
                            "std_error": np.nan})
        return pd.concat([fixed, var], ignore_index=True)

    def summary(self) -> str:
        """Human-readable summary of the fit."""
        units = ", ".join(f"{k}: {v}" for k, v in self.n_units.items())
        lines = [
            f"Linear mixed model fit by {self.method} (fit path {self.fit_path})",
            f"Observations: {self.n_observations}; units: {units}",
            f"{self.method} log-likelihood: {self.loglike:.4f}  converged: {self.converged}  "
            f"iterations: {self.n_iter}  singular: {self.singular}",
            "",
            "Random effects (variance, SD):",
        ]
        for name, v in self.variance_components.items():
            lines.append(f"  {name:<20s} {v:14.6g} {np.sqrt(v):12.6g}")
        lines += ["", "Fixed effects:", f"  {'term':<28s} {'estimate':>14s} {'std_error':>12s}"]
        for term, est in self.fixed_effects.items():
            lines.append(f"  {term:<28s} {est:14.6g} {self.std_errors[term]:12.6g}")
        if self.warnings:
            lines += ["", "Warnings:"] + [f"  - {w}" for w in self.warnings]
        return "\n".join(lines)


def _variance_vector(design: NestedDesign, variances) -> np.ndarray:
    names = [*design.component_names, "residual"]
    if isinstance(variances, Mapping):
        variances = [variances[name] for name in names]
    v = np.asarray(variances, dtype=float)
    if v.shape != (len(names),):
        raise ValueError(f"expected {len(names)} variances ({names}), got shape {v.shape}")
    if v[-1] <= 0:
        raise ValueError("the residual variance must be positive")
    return v


# ---------------------------------------------------------------------- entry point
def fit_nested_lmm(
    y: np.ndarray,
    X: np.ndarray,
    levels: Mapping[str, Sequence | np.ndarray],
    time: Sequence | np.ndarray | None = None,
    time_effects: Sequence[str] = (),
    reml: bool = True,
    column_names: Sequence[str] | None = None,
) -> NestedLMMResult:
    """Fit a nested random-intercept linear mixed model by exact REML or ML.

    Parameters
    ----------
    y : array (n,)
        Response, finite (drop rows with a missing score first).
    X : array (n, p)
        Fixed-effects design of full column rank (include the intercept column).
    levels : mapping of str to array (n,)
        Grouping identifiers, outermost first, e.g. ``{"therapist": t, "patient": p}``.
        Nested by construction (a patient unit is a (therapist, patient) pair).
    time : array (n,), optional
        Time point of each row (needed for ``time_effects``).
    time_effects : sequence of str
        Levels with an extra "level x time point" random intercept, e.g. ``["therapist"]``
        (lme4's ``(1|therapist:time)``). Not for the innermost level if it has one row per
        time point (it would be confounded with the residual).
    reml : bool
        REML (default) or ML.
    column_names : sequence of str, optional
        Names of the columns of ``X``.

    Returns
    -------
    NestedLMMResult

    Examples
    --------
    The lme4 model ``y ~ X + (1|therapist) + (1|therapist:time) + (1|therapist:patient)``::

        fit_nested_lmm(y, X, {"therapist": th, "patient": pid}, time=t,
                       time_effects=["therapist"])
    """
    start_clock = _time.perf_counter()
    design = NestedDesign(y, X, levels, time=time, time_effects=time_effects, reml=reml,
                          column_names=column_names)
    opt = _optimise(design.profiled_deviance, design.n_components)
    theta = opt.theta
    pc = design.pieces(theta)
    dof = design.n - design.p if reml else design.n
    sigma2 = float(pc["r2"] / dof)
    names = design.column_names
    beta = pd.Series(pc["beta"], index=names, name="estimate")
    cov = pd.DataFrame(sigma2 * pc["XtViX_inv"], index=names, columns=names)
    se = pd.Series(np.sqrt(np.diag(cov.to_numpy())), index=names, name="std_error")
    vc = {name: float(theta[i] ** 2 * sigma2) for i, name in enumerate(design.component_names)}
    vc["residual"] = sigma2
    singular_names = [name for i, name in enumerate(design.component_names)
                      if theta[i] < SINGULAR_TOL]
    warnings = list(opt.messages)
    if singular_names:
        warnings.append("singular fit: variance of " + ", ".join(singular_names)
                        + " estimated at (or near) zero")
    if not opt.converged:
        warnings.append("the optimiser did not reach the convergence criteria")
    n_units = {lvl.name: lvl.n_units for lvl in design._levels}
    return NestedLMMResult(
        fixed_effects=beta, cov_fixed=cov, std_errors=se, variance_components=vc,
        theta=theta, sigma=float(np.sqrt(sigma2)), loglike=-opt.deviance / 2,
        deviance_value=opt.deviance, reml=bool(reml), converged=opt.converged,
        n_iter=opt.n_iter, singular=bool(singular_names), warnings=warnings,
        n_observations=design.n, n_units=n_units,
        fit_seconds=_time.perf_counter() - start_clock, design=design)
