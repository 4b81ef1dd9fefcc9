"""Cluster-robust (sandwich) variance pieces shared by the count, responder and ANCOVA models.

One small-sample correction is used everywhere, CR1 as in R's
``sandwich::vcovCL(type = "HC1")`` and Stata's ``vce(cluster)``.
"""

from __future__ import annotations

import math


def cr1_factor(n: int, k: int, n_clusters: int) -> float:
    """CR1 small-sample factor ``G/(G-1) * (n-1)/(n-k)``; NaN with a single cluster or with no
    residual degrees of freedom (n <= k: the factor would be negative or infinite, and the
    variance not estimable)."""
    if n_clusters <= 1 or n <= k:
        return math.nan
    return n_clusters / (n_clusters - 1) * (n - 1) / (n - k)
