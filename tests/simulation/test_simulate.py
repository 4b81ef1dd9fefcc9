"""Tests of the simulated default cohort (``trial_analysis.simulation.simulate``).

The contract's cleaning, eligibility and allocation rules are re-implemented compactly here with
pandas (:func:`apply_contract_rules`) as an independent check of the counts the extract is built
to give; the real pipeline steps are tested through their own modules and the integration test.
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trial_analysis.config import load_config
from trial_analysis.io import read_json
from trial_analysis.simulation.simulate import (
    SimulatedExtract,
    outcomes_wide,
    run_simulate,
    scaled_counts,
    simulate_extract,
    write_extract,
)

CONFIG_FILE = Path(__file__).resolve().parents[2] / "config" / "config.yaml"


@pytest.fixture(scope="module")
def config() -> dict:
    return load_config(CONFIG_FILE)


@pytest.fixture(scope="module")
def default_extract(config) -> SimulatedExtract:
    return simulate_extract(config, config["seed"])


@pytest.fixture(scope="module")
def default_result(config, default_extract) -> dict:
    return apply_contract_rules(default_extract, config)


def _codes(cell: object, separator: str = ";") -> list[str]:
    if not isinstance(cell, str):
        return []
    return [c.strip().upper() for c in cell.split(separator) if c.strip()]


def _completed_years(birth: pd.Series, reference: pd.Series) -> pd.Series:
    before_birthday = (reference.dt.month * 100 + reference.dt.day) < (
        birth.dt.month * 100 + birth.dt.day
    )
    return reference.dt.year - birth.dt.year - before_birthday.astype(int)


def apply_contract_rules(extract: SimulatedExtract, config: dict) -> dict:
    """Apply docs/data-contracts.md's rules (compactly) and return counts and tables."""
    elig = config["eligibility"]
    etmi = config["codes"]["etmi"]
    clbp = set(config["codes"]["clbp_diagnoses"])
    # Plain object strings: pandas' Arrow-backed `isin` is slow on large value lists.
    ther, pat, ses, out = (
        frame.astype({c: object for c in frame.columns if frame[c].dtype == "str"})
        for frame in (extract.therapists, extract.patients.drop_duplicates(),
                      extract.sessions.drop_duplicates(), extract.outcomes.drop_duplicates())
    )
    dropped = {
        "duplicate_patient_rows": len(extract.patients) - len(pat),
        "duplicate_session_rows": len(extract.sessions) - len(ses),
        "duplicate_outcome_rows": len(extract.outcomes) - len(out),
    }
    unknown = ~ses["episode_id"].isin(pat["episode_id"]) | ~ses["therapist_id"].isin(
        ther["therapist_id"]
    )
    dropped["sessions_unknown_patient"] = int(unknown.sum())
    ses = ses[~unknown]
    out = out[out["episode_id"].isin(pat["episode_id"])]
    bounds = {o["name"]: (o["min"], o["max"]) for o in config["outcomes"]}
    low = out["instrument"].map({k: v[0] for k, v in bounds.items()})
    high = out["instrument"].map({k: v[1] for k, v in bounds.items()})
    out_of_range = (out["score"] < low) | (out["score"] > high)
    dropped["out_of_range_scores"] = int(out_of_range.sum())
    out.loc[out_of_range, "score"] = np.nan

    for column in ("referral_date", "birth_date"):
        pat[column] = pd.to_datetime(pat[column], format="%Y-%m-%d")
    ses["session_date"] = pd.to_datetime(ses["session_date"], format="%Y-%m-%d")
    ther["etmi_training_date"] = pd.to_datetime(ther["etmi_training_date"], format="%Y-%m-%d")
    ses["codes"] = ses["treatment_codes"].fillna("").str.upper().str.replace(" ", "")

    pat["reason"] = ""
    outside = (pat["referral_date"] < pd.Timestamp(elig["window_start"])) | (
        pat["referral_date"] > pd.Timestamp(elig["window_end"])
    )
    pat.loc[outside, "reason"] = "referral outside study window"
    age = _completed_years(pat["birth_date"], pat["referral_date"])
    pat.loc[(pat["reason"] == "") & (age < elig["min_age"]), "reason"] = "age under 18"
    codes = pat["diagnosis_codes"].str.upper().str.replace(" ", "").str.split(";").explode()
    has_clbp = codes.isin(clbp).groupby(level=0).any()
    pat.loc[(pat["reason"] == "") & ~has_clbp, "reason"] = "no CLBP diagnosis code"
    remaining = pat[pat["reason"] == ""].sort_values(["patient_id", "referral_date", "episode_id"])
    later = remaining[remaining.groupby("patient_id").cumcount() > 0].index
    pat.loc[later, "reason"] = "not the patient's first episode"
    no_session = ~pat["episode_id"].isin(ses["episode_id"])
    pat.loc[(pat["reason"] == "") & no_session, "reason"] = "no attended session"
    cohort = pat[pat["reason"] == ""].copy()
    cohort["age"] = (cohort["referral_date"] - cohort["birth_date"]).dt.days / 365.25

    s = ses[ses["episode_id"].isin(cohort["episode_id"])].merge(
        ther[["therapist_id", "etmi_training_date"]], on="therapist_id"
    )
    s["etmi"] = s["codes"].str.split(";").explode().eq(etmi).groupby(level=0).any()
    s["counted"] = s["etmi"] & (s["etmi_training_date"] <= s["session_date"])
    per_episode = s.groupby("episode_id").agg(
        counted=("counted", "any"), etmi=("etmi", "any"), n_sessions=("session_id", "size")
    )
    cohort = cohort.merge(per_episode, left_on="episode_id", right_index=True)
    adopters = set(s.loc[s["counted"], "therapist_id"])

    o = out[out["episode_id"].isin(cohort["episode_id"])]
    primary = config["complete_case"]["outcomes"]
    complete = pd.Series(True, index=cohort["episode_id"])
    for name in primary:
        scored = o[(o["instrument"] == name) & o["score"].notna()]
        for label in (config["timepoints"]["baseline"], config["timepoints"]["followup"]):
            present = set(scored.loc[scored["timepoint"] == label, "episode_id"])
            complete &= complete.index.isin(present)
    cohort["complete"] = complete.reindex(cohort["episode_id"]).to_numpy()
    reasons = pat.loc[pat["reason"] != "", "reason"].value_counts().to_dict()
    return {
        "cohort": cohort,
        "sessions": s,
        "adopters": adopters,
        "reasons": reasons,
        "dropped": dropped,
        "counts": {
            "clinics": ther["clinic_id"].nunique(),
            "therapists": len(ther),
            "therapists_trained": int(ther["etmi_training_date"].notna().sum()),
            "therapists_adopted": len(adopters),
            "eligible_patients": len(cohort),
            "patients_female": int((cohort["sex"] == "F").sum()),
            "etmi_patients": int(cohort["counted"].sum()),
            "complete_cases": int(cohort["complete"].sum()),
            "complete_cases_etmi": int((cohort["complete"] & cohort["counted"]).sum()),
        },
    }


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


# ----------------------------------------------------------------------------- exact counts


def test_default_cohort_gives_the_published_counts(default_result):
    assert default_result["counts"] == {
        "clinics": 13,
        "therapists": 128,
        "therapists_trained": 109,
        "therapists_adopted": 70,
        "eligible_patients": 4193,
        "patients_female": 2454,
        "etmi_patients": 711,
        "complete_cases": 1624,
        "complete_cases_etmi": 259,
    }


def test_default_cohort_age_matches_publication(default_result):
    age = default_result["cohort"]["age"]
    assert abs(age.mean() - 56.3) <= 0.3
    assert abs(age.std() - 16.7) <= 0.5
    assert age.min() >= 18


def test_every_adopter_has_an_etmi_patient_and_no_one_else_counts(default_extract, default_result):
    cohort = default_result["cohort"]
    s = default_result["sessions"]
    etmi_episodes = set(cohort.loc[cohort["counted"], "episode_id"])
    treating = s[s["episode_id"].isin(etmi_episodes) & s["counted"]]
    assert set(treating["therapist_id"]) == default_result["adopters"]
    ther = default_extract.therapists
    trained = set(ther.loc[ther["etmi_training_date"].notna(), "therapist_id"])
    assert default_result["adopters"] <= trained
    non_adopters = trained - default_result["adopters"]
    assert len(non_adopters) == 39
    assert not s[s["therapist_id"].isin(non_adopters)]["etmi"].any()


def test_junk_counts_per_reason_are_exact(default_extract, default_result, config):
    junk = config["simulation"]["assumptions"]["junk"]
    assert default_result["reasons"] == {
        "referral outside study window": junk["outside_window"],
        "age under 18": junk["under_18"],
        "no CLBP diagnosis code": junk["non_clbp"],
        "not the patient's first episode": junk["repeat_episode"],
    }
    for key, value in default_result["dropped"].items():
        assert value == junk[key], key
    cohort = default_result["cohort"]
    untrained = cohort[cohort["etmi"] & ~cohort["counted"]]
    assert len(untrained) == junk["untrained_etmi_code"]
    assert default_extract.truth["junk"] == junk
    ledger = default_extract.truth["expected_ledger"]
    for table, frame in default_extract.tables().items():
        assert sum(ledger[table].values()) == len(frame), table
    assert ledger["patients"]["excluded"] == sum(default_result["reasons"].values())
    assert ledger["patients"]["kept"] == len(cohort)
    assert ledger["sessions"]["repaired"] == junk["messy_codes"]
    assert ledger["outcomes"]["value_set_missing"] == junk["out_of_range_scores"]
    kept_sessions = default_result["sessions"]
    assert ledger["sessions"]["kept"] + ledger["sessions"]["repaired"] == len(kept_sessions)


def test_repairable_codes_are_planted_and_repair_to_known_codes(default_extract, config):
    codes = default_extract.sessions["treatment_codes"].dropna()
    messy = codes[codes != codes.str.strip().str.upper().str.replace(" ", "")]
    assert len(messy) == config["simulation"]["assumptions"]["junk"]["messy_codes"]
    allowed = set(config["codes"]["treatments"])
    assert set(c for cell in codes for c in _codes(cell)) <= allowed
    assert not messy.str.upper().str.contains(config["codes"]["etmi"]).any()


def test_invalid_rows_stay_well_below_the_threshold(default_extract, default_result):
    raw = {name: len(frame) for name, frame in default_extract.tables().items()}
    dropped = default_result["dropped"]
    assert dropped["duplicate_patient_rows"] / raw["patients"] < 0.01
    bad_sessions = dropped["duplicate_session_rows"] + dropped["sessions_unknown_patient"]
    assert bad_sessions / raw["sessions"] < 0.01
    assert dropped["duplicate_outcome_rows"] / raw["outcomes"] < 0.01


def test_out_of_range_scores_avoid_complete_case_outcomes(default_extract, config):
    bounds = {o["name"]: (o["min"], o["max"]) for o in config["outcomes"]}
    out = default_extract.outcomes
    low = out["instrument"].map(lambda n: bounds[n][0])
    high = out["instrument"].map(lambda n: bounds[n][1])
    bad = out[(out["score"] < low) | (out["score"] > high)]
    assert len(bad) == config["simulation"]["assumptions"]["junk"]["out_of_range_scores"]
    assert not bad["instrument"].isin(config["complete_case"]["outcomes"]).any()


def test_scaled_cohort_gives_scaled_counts(config):
    extract = simulate_extract(config, 7, n_patients=1500)
    result = apply_contract_rules(extract, config)
    expected = scaled_counts(config["simulation"], 1500)
    for key, value in result["counts"].items():
        assert value == expected[key], key
    assert expected["therapists"] == round(128 * 1500 / 4193)
    assert result["counts"]["eligible_patients"] == 1500


def test_mnar_mechanism_keeps_exact_counts(config):
    cfg = copy.deepcopy(config)
    cfg["simulation"]["assumptions"]["missingness"]["mechanism"] = "MNAR"
    result = apply_contract_rules(simulate_extract(cfg, 3, n_patients=1000), cfg)
    expected = scaled_counts(cfg["simulation"], 1000)
    assert result["counts"]["complete_cases"] == expected["complete_cases"]
    assert result["counts"]["complete_cases_etmi"] == expected["complete_cases_etmi"]


# ----------------------------------------------------------------------------- consistency


def test_internal_consistency(default_extract, config):
    ex = default_extract
    pat = ex.patients.drop_duplicates()
    assert pat["episode_id"].is_unique
    ses = ex.sessions.drop_duplicates()
    assert ses["session_id"].is_unique
    assert ex.outcomes.drop_duplicates()["outcome_id"].is_unique
    assert ses["therapist_id"].isin(ex.therapists["therapist_id"]).all()
    unknown = ~ses["episode_id"].isin(pat["episode_id"])
    assert unknown.sum() == config["simulation"]["assumptions"]["junk"]["sessions_unknown_patient"]
    assert ex.outcomes["episode_id"].isin(pat["episode_id"]).all()
    assert pat["episode_id"].isin(ses["episode_id"]).all()  # every episode attended

    dates = pat[["episode_id", "referral_date", "birth_date"]].copy()
    dates[["referral_date", "birth_date"]] = dates[["referral_date", "birth_date"]].apply(
        pd.to_datetime
    )
    assert (dates["birth_date"] < dates["referral_date"]).all()
    s = ses[~unknown].merge(dates, on="episode_id")
    s["session_date"] = pd.to_datetime(s["session_date"])
    assert (s["session_date"] >= s["referral_date"]).all()
    last_session = s.groupby("episode_id")["session_date"].max()
    first_session = s.groupby("episode_id")["session_date"].min()
    o = ex.outcomes.copy()
    o["assessment_date"] = pd.to_datetime(o["assessment_date"])
    by_time = o.groupby(["episode_id", "timepoint"])["assessment_date"].agg(["min", "max"])
    assert (by_time["min"] == by_time["max"]).all()  # one date per episode and time point
    by_time = by_time["min"].unstack()
    intake, discharge = config["timepoints"]["baseline"], config["timepoints"]["followup"]
    both = by_time.dropna()
    assert (both[intake] <= both[discharge]).all()
    assert (by_time[discharge].dropna() == last_session.reindex(
        by_time[discharge].dropna().index)).all()
    assert (by_time[intake].dropna() >= first_session.reindex(
        by_time[intake].dropna().index)).all()
    # The same person keeps birth date and sex across episodes.
    per_person = pat.groupby("patient_id")[["birth_date", "sex"]].nunique()
    assert (per_person == 1).all().all()


def test_primary_therapist_is_the_treating_one(default_result, default_extract):
    """Covering sessions never tie with or outnumber the treating therapist's sessions."""
    s = default_result["sessions"]
    counts = s.groupby(["episode_id", "therapist_id"]).size().rename("n").reset_index()
    counts = counts.sort_values(["episode_id", "n"], ascending=[True, False])
    top_two = counts.groupby("episode_id")["n"].agg(lambda n: list(n)[:2])
    assert (top_two.map(lambda n: len(n) == 1 or n[0] > n[1])).all()  # a strict majority
    main = counts.groupby("episode_id")["therapist_id"].first()
    first = s.sort_values(["session_date", "session_id"]).groupby("episode_id")[
        "therapist_id"].first()
    pd.testing.assert_series_equal(main.sort_index(), first.sort_index(), check_names=False,
                                   check_dtype=False)
    assert (counts.groupby("episode_id").size() > 1).mean() > 0.05  # covering happens
    covering = s.merge(main.rename("primary"), left_on="episode_id", right_index=True)
    covering = covering[covering["therapist_id"] != covering["primary"]]
    assert not covering["etmi"].any()
    clinic = default_extract.therapists.set_index("therapist_id")["clinic_id"]
    assert (clinic[covering["therapist_id"]].to_numpy()
            == clinic[covering["primary"]].to_numpy()).all()


def test_wide_and_long_layouts_hold_the_same_scores(default_extract, config, tmp_path):
    write_extract(default_extract, tmp_path, layout="wide", file_format="csv", config=config)
    wide = pd.read_csv(tmp_path / "outcomes.csv")
    long = default_extract.outcomes
    assert len(wide) == long.drop_duplicates()["episode_id"].nunique() + (
        config["simulation"]["assumptions"]["junk"]["duplicate_outcome_rows"]
    )
    assert wide.duplicated().sum() == long.duplicated().sum()
    melted = wide.drop_duplicates().melt(
        id_vars=["episode_id"],
        value_vars=[f"{o['name']}_{t}" for o in config["outcomes"]
                    for t in (config["timepoints"]["baseline"], config["timepoints"]["followup"])],
        value_name="score",
    ).dropna(subset=["score"])
    melted[["instrument", "timepoint"]] = melted["variable"].str.rsplit("_", n=1, expand=True)
    left = melted.set_index(["episode_id", "instrument", "timepoint"])["score"].sort_index()
    right = long.drop_duplicates().set_index(["episode_id", "instrument", "timepoint"])[
        "score"].sort_index().astype(float)
    pd.testing.assert_series_equal(left, right, check_names=False)
    assert (wide[f"{config['timepoints']['baseline']}_date"].notna()
            | wide[f"{config['timepoints']['followup']}_date"].notna()).all()
    direct = outcomes_wide(long, config)
    assert len(direct) == len(wide)


# ----------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_files_and_other_seeds_differ(config, tmp_path):
    for fmt in ("csv", "parquet"):
        digests = []
        for run, seed in enumerate((11, 11, 12)):
            folder = tmp_path / f"{fmt}{run}"
            run_simulate(config, seed=seed, out=folder, layout="long", file_format=fmt,
                         n_patients=400)
            digests.append(_digest(folder))
        assert set(digests[0]) == {f"{t}.{fmt}" for t in
                                   ("therapists", "patients", "sessions", "outcomes")} | {
            "truth.json"}
        assert digests[0] == digests[1]
        for name in digests[0]:
            assert digests[0][name] != digests[2][name], name


def test_run_simulate_takes_defaults_from_config(config, tmp_path):
    cfg = copy.deepcopy(config)
    cfg["seed"] = 5
    cfg["input"]["format"] = "parquet"
    cfg["input"]["outcomes_layout"] = "wide"
    run_simulate(cfg, seed=None, out=tmp_path, layout=None, file_format=None, n_patients=300)
    truth = read_json(tmp_path / "truth.json")
    assert truth["seed"] == 5 and truth["layout"] == "wide" and truth["format"] == "parquet"
    wide = pd.read_parquet(tmp_path / "outcomes.parquet")
    assert "function_intake" in wide.columns and "discharge_date" in wide.columns


# ----------------------------------------------------------------------------- calibration


@pytest.fixture(scope="module")
def large(config) -> tuple[SimulatedExtract, dict]:
    extract = simulate_extract(config, 2024, n_patients=30000)
    return extract, apply_contract_rules(extract, config)


def test_calibration_at_large_n(large, config):
    extract, result = large
    cohort = result["cohort"]
    out = extract.outcomes.drop_duplicates()
    out = out[out["episode_id"].isin(cohort["episode_id"])].merge(
        cohort[["episode_id", "counted"]], on="episode_id")
    bounds = {o["name"]: (o["min"], o["max"]) for o in config["outcomes"]}
    out = out[[bounds[i][0] <= s <= bounds[i][1] for i, s in zip(out["instrument"], out["score"],
                                                                    strict=True)]]

    def scores(name, time, etmi=None):
        sel = (out["instrument"] == name) & (out["timepoint"] == time)
        if etmi is not None:
            sel &= out["counted"] == etmi
        return out.loc[sel, "score"]

    f0 = scores("function", "intake")
    assert abs(f0.median() - 51) <= 1
    assert abs(f0.quantile(0.25) - 44) <= 1.5 and abs(f0.quantile(0.75) - 59) <= 1.5
    assert abs(scores("function", "discharge", etmi=False).median() - 62) <= 2.5
    pain = scores("pain", "intake")
    assert abs(pain.mean() - 6) <= 0.15 and abs(pain.std() - 2) <= 0.2
    assert set(pain.unique()) <= set(range(11))
    fa = scores("fear_avoidance", "intake")
    assert abs(fa.mean() - 55) <= 1.5 and abs(fa.std() - 22) <= 1.5
    sessions = cohort.groupby("counted")["n_sessions"].mean()
    assert abs(sessions[False] - 5.1) <= 0.15 and abs(sessions[True] - 3.5) <= 0.15
    assert cohort["n_sessions"].var() > cohort["n_sessions"].mean()  # over-dispersed
    assert abs(cohort["depression"].mean() - 0.15) <= 0.01
    assert abs(cohort["anxiety"].mean() - 0.12) <= 0.01
    both = (cohort["depression"] & cohort["anxiety"]).mean()
    assert both > cohort["depression"].mean() * cohort["anxiety"].mean() * 1.5  # overlapping


def test_allocation_is_confounded_as_configured(large):
    cohort = large[1]["cohort"]
    etmi = cohort["counted"].astype(bool)
    assert cohort.loc[etmi, "age"].mean() < cohort.loc[~etmi, "age"].mean() - 1


def test_realised_effects_are_close_to_structural(large, config):
    truth = large[0].truth
    for name in ("function", "pain", "fear_avoidance"):
        effect = truth["effects"][name]
        assert effect["structural"] == config["simulation"]["assumptions"][f"effect_{name}"]
        assert abs(effect["realised_ate"] - effect["structural"]) <= 0.1 + 0.05 * abs(
            effect["structural"])


def test_effect_modification_reaches_subgroup_truth(config):
    cfg = copy.deepcopy(config)
    cfg["simulation"]["assumptions"]["effect_modification"]["depression"]["function"] = 3.0
    truth = simulate_extract(cfg, 1, n_patients=300).truth
    depression = truth["effects"]["function"]["subgroups"]["depression"]
    assert depression["1"]["structural"] == 7.0 and depression["0"]["structural"] == 4.0
    assert depression["1"]["latent_mean"] == pytest.approx(7.0)


def test_truth_holds_every_parameter(default_extract, config, tmp_path):
    write_extract(default_extract, tmp_path, config=config)
    truth = read_json(tmp_path / "truth.json")
    assumptions = config["simulation"]["assumptions"]
    assert truth["seed"] == config["seed"]
    assert truth["junk"] == assumptions["junk"]
    for key in ("mechanism", "age_per_10y", "function_intake_per_10", "sessions",
                "mnar_change_per_10", "intake_missing_fraction"):
        assert truth["missingness"][key] == assumptions["missingness"][key]
    assert truth["selection"]["etmi_log_weight"]["age_per_10y"] == assumptions["confounding"][
        "age_per_10y"]
    assert truth["sessions"]["ratio_of_means"] == pytest.approx(3.5 / 5.1)
    for name in ("function", "pain", "fear_avoidance"):
        model = truth["outcome_model"]["outcomes"][name]
        assert model["effect"] == assumptions[f"effect_{name}"]
        assert model["change_usual_care"] == assumptions[f"{name}_change_usual_care"]
        vc = model["variance_components"]
        assert set(vc) == {"clinic", "clinic_time", "therapist", "therapist_time", "patient",
                           "residual"}
        icc = vc["therapist_time"] / (vc["therapist_time"] + vc["clinic_time"] + vc["residual"])
        assert icc == pytest.approx(assumptions["therapist_icc_change"])
        assert set(model["beta_level"]) == set(model["beta_change"])
    assert truth["counts"]["eligible_patients"] == 4193


# ----------------------------------------------------------------------------- writing, errors


def test_fast_csv_writer_matches_the_shared_writer(default_extract, config, tmp_path):
    from trial_analysis import io
    from trial_analysis.simulation.simulate import _write_csv

    tables = default_extract.tables() | {"wide": outcomes_wide(default_extract.outcomes, config)}
    odd = pd.DataFrame({"text": pd.array(["a b", None, "c,d"], dtype="str"),
                        "x": [1.25, np.nan, -0.5], "n": pd.array([1, None, -3], dtype="Int64")})
    tables["needs_quotes"] = odd
    tables["no_quotes"] = odd.iloc[:2]
    for name, frame in tables.items():
        _write_csv(frame, tmp_path / f"{name}.fast.csv")
        io.write_csv(frame, tmp_path / f"{name}.pandas.csv", neutralise=False)
        fast = (tmp_path / f"{name}.fast.csv").read_bytes()
        assert fast == (tmp_path / f"{name}.pandas.csv").read_bytes(), name


def test_zero_junk_gives_a_clean_extract(config):
    cfg = copy.deepcopy(config)
    cfg["simulation"]["assumptions"]["junk"] = {
        k: 0 for k in cfg["simulation"]["assumptions"]["junk"]}
    extract = simulate_extract(cfg, 9, n_patients=300)
    result = apply_contract_rules(extract, cfg)
    assert result["reasons"] == {}
    assert set(result["dropped"].values()) == {0}
    assert len(extract.patients) == result["counts"]["eligible_patients"] == 300


def test_bad_simulation_settings_are_config_errors(config, tmp_path):
    from trial_analysis.errors import ConfigError

    cfg = copy.deepcopy(config)
    del cfg["simulation"]["assumptions"]["effect_pain"]
    with pytest.raises(ConfigError, match="effect_pain"):
        simulate_extract(cfg, 1, n_patients=300)
    cfg = copy.deepcopy(config)
    cfg["simulation"]["assumptions"]["therapist_training_period"] = ["2021-01-01", "2024-01-01"]
    with pytest.raises(ConfigError, match="therapist_training_period"):
        simulate_extract(cfg, 1, n_patients=300)
    with pytest.raises(ConfigError, match="n_patients"):
        simulate_extract(config, 1, n_patients=10)
    cfg = copy.deepcopy(config)
    cfg["input"]["format"] = "xlsx"
    with pytest.raises(ConfigError, match="--format"):
        run_simulate(cfg, seed=1, out=tmp_path, n_patients=300)
    assert not any(tmp_path.iterdir())
