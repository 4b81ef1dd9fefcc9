"""Kenward-Roger df of the random-intercept models (``analysis.ddf: kenward_roger``) against
lmerTest's ``ddf = "Kenward-Roger"`` (pbkrtest).

References: ``tests/golden/reference/kr_*.json`` from ``tests/golden/make_golden_kr.R`` (same
data, formulas and optimiser settings as ``make_golden_models.R``). Tolerances: estimates
1e-5 x their SE (absolute), adjusted SEs and KR df 1e-5 relative (observed: 4e-6, 1e-6,
1.4e-6), the KR F test 1e-4; the fits themselves agree with lme4 to ~1e-6, which bounds the
agreement of anything computed from them.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trial_analysis.config import load_config
from trial_analysis.errors import ConfigError
from trial_analysis.models.outcome_models import _contrast, fit_outcome_model, model_spec

pytestmark = pytest.mark.golden

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "golden"
# name: (outcome, random_effects, random_time_effects)
CASES = {
    "cohort_function_cc": ("function", ["therapist", "patient"], ["therapist"]),
    "cohort_pain_cc_patient": ("pain", ["patient"], []),
    "cohort_function_cc_clinic": ("function", ["clinic", "therapist", "patient"], ["therapist"]),
}


@pytest.fixture(scope="module")
def base_config() -> dict:
    return load_config(REPO / "config" / "config.yaml")


def _config(base: dict, name: str) -> dict:
    config = copy.deepcopy(base)
    _, levels, time_levels = CASES[name]
    config["analysis"].update(covariates=["age", "sex", "symptom_duration_weeks"],
                              random_effects=list(levels), random_time_effects=list(time_levels),
                              reml=True, ddf="kenward_roger", fit_path="fast")
    return config


@pytest.mark.parametrize(("name", "fit_path"), [*((n, "fast") for n in CASES),
                                               ("cohort_pain_cc_patient", "statsmodels")])
def test_kenward_roger_matches_lmertest(name: str, fit_path: str, base_config: dict) -> None:
    reference = json.loads((GOLDEN / "reference" / f"kr_{name}.json").read_text())
    frame = pd.read_csv(GOLDEN / "data" / "cohort.csv")
    config = _config(base_config, name)
    config["analysis"]["fit_path"] = fit_path
    result = fit_outcome_model(frame, config, CASES[name][0], "complete_case")
    assert result.inference == "kenward_roger"
    assert "Kenward-Roger" in result.method
    mine = result.fixed_effects.set_index("term")
    for row in reference["fixed_effects"]:
        got = mine.loc[row["term"]]
        assert got["estimate"] == pytest.approx(row["estimate"], abs=1e-5 * row["std_error"])
        assert got["std_error"] == pytest.approx(row["std_error"], rel=1e-5)
        assert got["df"] == pytest.approx(row["df"], rel=1e-5)
        assert got["p_value"] == pytest.approx(row["p_value"], rel=1e-3, abs=1e-8)


def test_kenward_roger_f_test(base_config: dict) -> None:
    """The joint KR F test of the arm terms (pbkrtest's scaled F) as lmerTest's contest."""
    from trial_analysis.models.outcome_models import (
        _fit,
        fixed_design,
        long_data,
        random_design,
    )

    name = "cohort_function_cc"
    reference = json.loads((GOLDEN / "reference" / f"kr_{name}.json").read_text())
    config = _config(base_config, name)
    spec = model_spec(config, "function", "complete_case")
    long, _ = long_data(pd.read_csv(GOLDEN / "data" / "cohort.csv"), spec)
    fixed = fixed_design(long, spec)
    fit = _fit(long, spec, fixed, random_design(long, spec))
    names = list(fixed.X.columns)
    L = np.zeros((len(reference["arm_f_test"]["terms"]), len(names)))
    for i, term in enumerate(reference["arm_f_test"]["terms"]):
        L[i, names.index(term)] = 1.0
    test = fit.inference.f_test(L)
    ref = reference["arm_f_test"]
    assert test["F"] == pytest.approx(ref["F"], rel=1e-4)
    assert test["den_df"] == pytest.approx(ref["den_df"], rel=1e-4)
    assert test["num_df"] == ref["num_df"]
    assert test["p_value"] == pytest.approx(ref["p_value"], rel=1e-3)
    # A one-row test is the square of the t test.
    one = fit.inference.f_test(L[:1])
    t = _contrast(fit, L[0], 0.95)
    assert one["den_df"] == pytest.approx(t["df"], rel=1e-10)


def test_kenward_roger_needs_reml(base_config: dict) -> None:
    config = _config(base_config, "cohort_function_cc")
    config["analysis"]["reml"] = False
    with pytest.raises(ConfigError, match="Kenward-Roger df need a REML fit"):
        model_spec(config, "function", "complete_case")
