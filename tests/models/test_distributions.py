"""The light reference distributions give exactly what ``scipy.stats`` gives."""

import numpy as np
import pytest
from scipy import stats

from trial_analysis.models import distributions

X = [-2.0, 0.0, 1e-8, 0.5, 1.959963984540054, 3.7, 12.0, 40.0, np.inf]
Q = [0.0, 1e-12, 0.025, 0.5, 0.8, 0.975, 0.995, 1 - 1e-12, 1.0]
DF = [0.7, 1.0, 2.5, 12.0, 87.3, 4192.0, 1e7, np.inf]


def _same(ours: float, theirs: float) -> bool:
    return (np.isnan(ours) and np.isnan(theirs)) or ours == theirs


@pytest.mark.parametrize("x", X)
def test_normal_tail_and_quantile(x: float) -> None:
    assert _same(distributions.norm_sf(x), float(stats.norm.sf(x)))
    assert _same(distributions.norm_sf(-x), float(stats.norm.sf(-x)))
    for q in Q:
        assert _same(distributions.norm_ppf(q), float(stats.norm.ppf(q)))


@pytest.mark.parametrize("df", DF)
def test_t_tail_and_quantile(df: float) -> None:
    for x in X:
        assert _same(distributions.t_sf(x, df), float(stats.t.sf(x, df)))
    for q in Q:
        assert _same(distributions.t_ppf(q, df), float(stats.t.ppf(q, df)))


@pytest.mark.parametrize("df", [1.0, 2.0, 3.0, 7.5, 40.0])
def test_chi2_and_f_tails(df: float) -> None:
    for x in X:
        assert _same(distributions.chi2_sf(x, df), float(stats.chi2.sf(x, df)))
        for den in (1.0, 5.5, 300.0, np.inf):
            assert _same(distributions.f_sf(x, df, den), float(stats.f.sf(x, df, den)))


def test_missing_input_stays_missing() -> None:
    assert np.isnan(distributions.t_sf(np.nan, 10.0))
    assert np.isnan(distributions.norm_sf(np.nan))
    assert np.isnan(distributions.t_ppf(0.975, np.nan))
