"""Reference distributions for tests and intervals, without importing ``scipy.stats``.

Every pipeline step runs in its own process, and importing ``scipy.stats`` costs about half a
second of each one (it builds its documentation and hundreds of distribution objects). The
steps only need a handful of tail probabilities and quantiles, which ``scipy.stats`` computes
by calling exactly these ``scipy.special`` functions; calling them directly gives the same
numbers (``tests/models/test_distributions.py`` checks that) at a fraction of the import cost.
"""

from __future__ import annotations

import numpy as np
from scipy import special


def norm_sf(x: float) -> float:
    """Upper tail of the standard normal, as ``scipy.stats.norm.sf``."""
    return float(special.ndtr(-x))


def norm_ppf(q: float) -> float:
    """Quantile of the standard normal, as ``scipy.stats.norm.ppf``."""
    return float(special.ndtri(q))


def t_sf(x: float, df: float) -> float:
    """Upper tail of Student's t with ``df`` degrees of freedom, as ``scipy.stats.t.sf``.

    ``df = inf`` gives the normal tail, as in ``scipy.stats``.
    """
    return float(special.stdtr(df, -x))


def t_ppf(q: float, df: float) -> float:
    """Quantile of Student's t with ``df`` degrees of freedom, as ``scipy.stats.t.ppf``."""
    if q in (0.0, 1.0) and df > 0:  # scipy.stats answers the ends of the support itself
        return -np.inf if q == 0 else np.inf
    return float(special.stdtrit(df, q))


def chi2_sf(x: float, df: float) -> float:
    """Upper tail of the chi-squared distribution, as ``scipy.stats.chi2.sf``."""
    if x <= 0 and df > 0:  # at or below the support, where scipy.stats answers 1 itself
        return 1.0
    return float(special.chdtrc(df, x))


def f_sf(x: float, dfn: float, dfd: float) -> float:
    """Upper tail of the F distribution, as ``scipy.stats.f.sf``."""
    if x <= 0 and dfn > 0 and dfd > 0:  # at or below the support, as for chi2_sf
        return 1.0
    return float(special.fdtrc(dfn, dfd, x))

