"""Generate the raw data of the worked example `adam_adqs` (a made-up CDISC ADaM trial).

A randomised, placebo-controlled trial in major depression, as a sponsor delivers it: two SAS
transport files (``.xpt``, version 5, written by pyreadstat) in CDISC ADaM structure.

* ``adsl.xpt``: one row per subject (STUDYID, USUBJID, SUBJID, SITEID, AGE, SEX, TRT01P,
  TRT01PN, RANDDT, ITTFL, FASFL, DURDIS), with SAS variable labels;
* ``adqs.xpt``: a BDS dataset, one row per subject, parameter and analysis visit (USUBJID,
  TRTP, PARAMCD, PARAM, AVISIT, AVISITN, ADT, AVAL, BASE, CHG, ABLFL, ANL01FL). Three
  parameters: HAMD17 (HAM-D 17-item total, lower is better) and SDS (Sheehan Disability Scale)
  are analysed; HAMA (anxiety) is not selected. Visits: Screening, Baseline (ABLFL = Y), Week 2,
  4 and 8 (analysed) and a Week 12 follow-up that is not analysed.

Planted for the selection and the ledger: a repeated Week 4 assessment flagged ANL01FL = N
(not analysed), an unscheduled visit (ANL01FL = N), a missing AVAL (missing stays missing), an
HAMD17 value of 99 (outside 0-52: set missing), a minor in ADSL (excluded by eligibility),
and six randomised subjects outside the full analysis set (FASFL = N: never dosed; the
config's row filter on FASFL excludes them).

``example_truth.json`` records the true effects and the expected counts the e2e test checks.

    python config/examples/adam_adqs/make_data.py             # -> data/examples/adam_adqs/raw
    python config/examples/adam_adqs/make_data.py --out DIR --n 300 --seed 5
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyreadstat

STUDY = "XYZ-301"
VISITS = {"Week 2": 2, "Week 4": 4, "Week 8": 8}
# Mean change from baseline on placebo and the drug's extra change (negative: improvement).
PLACEBO_CHANGE = {"HAMD17": [-3.0, -5.0, -7.0], "SDS": [-1.5, -2.5, -3.5]}
TRUE_EFFECT = {"HAMD17": [-0.5, -1.5, -3.0], "SDS": [-0.5, -1.0, -2.0]}
NOT_IN_FAS = [20, 21, 22, 23, 24, 25]                  # ADSL rows with FASFL = N
BASELINE = {"HAMD17": (24.0, 4.0), "SDS": (18.0, 4.0), "HAMA": (20.0, 5.0)}
NOISE_SD = {"HAMD17": 3.5, "SDS": 3.0, "HAMA": 3.5}
RANGE = {"HAMD17": (0.0, 52.0), "SDS": (0.0, 30.0), "HAMA": (0.0, 56.0)}
PARAM = {"HAMD17": "HAM-D 17-Item Total Score",
         "SDS": "Sheehan Disability Scale Total Score",
         "HAMA": "HAM-A Total Score"}
ADSL_LABELS = {
    "STUDYID": "Study Identifier", "USUBJID": "Unique Subject Identifier",
    "SUBJID": "Subject Identifier for the Study", "SITEID": "Study Site Identifier",
    "AGE": "Age", "SEX": "Sex", "TRT01P": "Planned Treatment for Period 01",
    "TRT01PN": "Planned Treatment for Period 01 (N)", "RANDDT": "Date of Randomization",
    "ITTFL": "Intent-To-Treat Population Flag",
    "FASFL": "Full Analysis Set Population Flag",
    "DURDIS": "Duration of Current Episode (Months)",
}
ADQS_LABELS = {
    "STUDYID": "Study Identifier", "USUBJID": "Unique Subject Identifier",
    "TRTP": "Planned Treatment", "PARAMCD": "Parameter Code", "PARAM": "Parameter",
    "AVISIT": "Analysis Visit", "AVISITN": "Analysis Visit (N)", "ADT": "Analysis Date",
    "AVAL": "Analysis Value", "BASE": "Baseline Value", "CHG": "Change from Baseline",
    "ABLFL": "Baseline Record Flag", "ANL01FL": "Analysis Flag 01",
}


def _adsl(n: int, rng: np.random.Generator) -> tuple[pd.DataFrame, np.ndarray]:
    subjid = [f"{i:04d}" for i in range(1, n + 1)]
    site = rng.integers(1, 9, n)
    arm = np.zeros(n, dtype=int)
    arm[rng.permutation(n)[: n // 2]] = 1                   # 1:1 randomisation
    randdt = pd.Timestamp("2023-02-01") + pd.to_timedelta(rng.integers(0, 300, n), "D")
    adsl = pd.DataFrame({
        "STUDYID": STUDY,
        "USUBJID": [f"{STUDY}-{s:03d}-{j}" for s, j in zip(site, subjid, strict=True)],
        "SUBJID": subjid,
        "SITEID": [f"{s:03d}" for s in site],
        "AGE": np.round(rng.normal(44, 12, n).clip(18, 75)).astype(float),
        "SEX": rng.choice(["F", "M"], n, p=[0.65, 0.35]),
        "TRT01P": np.where(arm == 1, "Drug A", "Placebo"),
        "TRT01PN": arm.astype(float),
        "RANDDT": [d.date() for d in randdt],
        "ITTFL": "Y",
        "DURDIS": np.round(rng.gamma(3.0, 2.5, n), 1),
    })
    adsl.loc[6, "AGE"] = 17.0                                # a minor: excluded
    # Randomised but never dosed: outside the full analysis set (no draw from rng, so the
    # rest of the data does not depend on it).
    adsl.insert(adsl.columns.get_loc("DURDIS"), "FASFL",
                np.where(np.isin(np.arange(n), NOT_IN_FAS), "N", "Y"))
    return adsl, arm


def _adqs(adsl: pd.DataFrame, arm: np.ndarray, rng: np.random.Generator) -> pd.DataFrame:
    n = len(adsl)
    visits = [("Screening", -1), ("Baseline", 0), *VISITS.items(), ("Week 12", 12)]
    rows = []
    for code, (mean, sd) in BASELINE.items():
        level = rng.normal(mean, sd, n)
        dropout = rng.random(n) < 0.12 + 0.08 * arm           # some stop before week 8
        for visit, number in visits:
            # Week 12 (not analysed) keeps the week-8 change.
            k = min(list(VISITS).index(visit), 2) if visit in VISITS else (
                2 if visit == "Week 12" else None)
            change = 0.0 if k is None else (PLACEBO_CHANGE.get(code, [0.0] * 3)[k]
                                            + TRUE_EFFECT.get(code, [0.0] * 3)[k] * arm)
            value = np.clip(level + change + rng.normal(0, NOISE_SD[code], n), *RANGE[code])
            for i in range(n):
                if number >= 8 and dropout[i]:
                    continue
                date = adsl.at[i, "RANDDT"] + pd.Timedelta(days=7 * number)
                rows.append((adsl.at[i, "USUBJID"], adsl.at[i, "TRT01P"], code, PARAM[code],
                             visit, float(number), date, float(np.round(value[i]))))
    adqs = pd.DataFrame(rows, columns=["USUBJID", "TRTP", "PARAMCD", "PARAM", "AVISIT",
                                       "AVISITN", "ADT", "AVAL"])
    adqs = adqs.sort_values(["USUBJID", "PARAMCD", "AVISITN"], kind="mergesort")
    adqs = adqs.reset_index(drop=True)
    adqs["ABLFL"] = np.where(adqs["AVISIT"] == "Baseline", "Y", "")
    adqs["ANL01FL"] = np.where(adqs["AVISIT"] == "Screening", "", "Y")
    adqs.insert(0, "STUDYID", STUDY)
    return adqs


def _plant(adqs: pd.DataFrame, adsl: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """The records the selection and the cleaning must handle, and their expected counts."""
    first = adsl.at[0, "USUBJID"]
    hamd = adqs["PARAMCD"] == "HAMD17"
    at = adqs.index[(adqs["USUBJID"] == first) & hamd & (adqs["AVISIT"] == "Week 4")][0]
    retest = adqs.loc[[at]].assign(AVAL=adqs.at[at, "AVAL"] + 2, ANL01FL="")
    second = adsl.at[1, "USUBJID"]
    at2 = adqs.index[(adqs["USUBJID"] == second) & hamd & (adqs["AVISIT"] == "Week 2")][0]
    unscheduled = adqs.loc[[at2]].assign(AVISIT="Unscheduled", AVISITN=np.nan, ANL01FL="")
    adqs = pd.concat([adqs, retest, unscheduled])
    adqs = adqs.sort_values(["USUBJID", "PARAMCD", "AVISITN"], kind="mergesort",
                            na_position="last").reset_index(drop=True)
    third, fourth = adsl.at[2, "USUBJID"], adsl.at[3, "USUBJID"]
    week8 = (adqs["AVISIT"] == "Week 8") & (adqs["PARAMCD"] == "HAMD17")
    adqs.loc[adqs.index[week8 & (adqs["USUBJID"] == third)], "AVAL"] = np.nan   # missing
    adqs.loc[adqs.index[week8 & (adqs["USUBJID"] == fourth)], "AVAL"] = 99.0    # implausible
    return adqs, {"missing": 1, "out_of_range": 1 if week8[adqs["USUBJID"] == fourth].any()
                  else 0}


def _base_and_change(adqs: pd.DataFrame) -> pd.DataFrame:
    base = adqs[adqs["ABLFL"] == "Y"].set_index(["USUBJID", "PARAMCD"])["AVAL"]
    key = pd.MultiIndex.from_frame(adqs[["USUBJID", "PARAMCD"]])
    adqs["BASE"] = base.reindex(key).to_numpy()
    adqs["CHG"] = np.where(adqs["AVISITN"] > 0, adqs["AVAL"] - adqs["BASE"], np.nan)
    return adqs


def make_trial(n: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """ADSL and ADQS (ADaM variable names) and the truth."""
    rng = np.random.default_rng(seed)
    adsl, arm = _adsl(n, rng)
    adqs, planted = _plant(_adqs(adsl, arm, rng), adsl)
    adqs = _base_and_change(adqs)
    analysed = adqs["PARAMCD"].isin(["HAMD17", "SDS"]) & (adqs["ANL01FL"] == "Y") & (
        (adqs["ABLFL"] == "Y") | adqs["AVISIT"].isin(list(VISITS)))
    truth = {
        "design": "randomised 1:1, drug vs placebo, 8 sites; ADaM ADSL + ADQS as .xpt",
        "effects": {"hamd": dict(zip(VISITS, TRUE_EFFECT["HAMD17"], strict=True)),
                    "sds": dict(zip(VISITS, TRUE_EFFECT["SDS"], strict=True))},
        "primary_followup": "Week 8",
        "subjects": n,
        "not_in_fas": len(NOT_IN_FAS),
        "adqs_records": len(adqs),
        "selected_records": int(analysed.sum()),
        **planted,
    }
    return adsl, adqs, truth


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/examples/adam_adqs/raw"))
    parser.add_argument("--n", type=int, default=300, help="subjects (default 300)")
    parser.add_argument("--seed", type=int, default=2031)
    args = parser.parse_args(argv)
    adsl, adqs, truth = make_trial(args.n, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    # Version 5 transport files, as regulatory submissions require (names <= 8 characters).
    pyreadstat.write_xport(adsl, args.out / "adsl.xpt", table_name="ADSL",
                           file_label="Subject-Level Analysis Dataset",
                           column_labels=ADSL_LABELS, file_format_version=5,
                           variable_format={"RANDDT": "DATE9."})
    pyreadstat.write_xport(adqs, args.out / "adqs.xpt", table_name="ADQS",
                           file_label="Questionnaire Analysis Dataset",
                           column_labels=ADQS_LABELS, file_format_version=5,
                           variable_format={"ADT": "DATE9."})
    (args.out / "example_truth.json").write_text(json.dumps(truth, indent=2) + "\n")
    print(f"wrote {len(adsl)} ADSL subjects and {len(adqs)} ADQS records to {args.out}")


if __name__ == "__main__":
    main()
