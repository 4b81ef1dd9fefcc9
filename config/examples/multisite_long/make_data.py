"""Generate the raw data of the worked example `multisite_long` (a made-up cohort).

A multi-site cohort comparing a group programme with usual care for knee osteoarthritis:
patients nested in 12 sites, the arm recorded per patient (sites differ in how often they
offer the programme), outcomes in the long layout (one row per patient, instrument and
visit) at baseline, 3 and 12 months, stored as tab-separated text with the registry's own
column names. Sites differ in their patients' level (a site random intercept). The
eligibility rules are the registry's: adults enrolled within the study window. Planted for the
ledger: an enrolment outside the window, a minor, a repeated visit row, an unparsable score.

``example_truth.json`` records the true effects the e2e test checks the pipeline against.

    python config/examples/multisite_long/make_data.py            # -> data/examples/...
    python config/examples/multisite_long/make_data.py --out DIR --n 500 --seed 3
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

VISITS = {"0m": 0, "3m": 3, "12m": 12}
# Mean change from baseline in usual care; the programme's extra change (higher is better).
CONTROL_CHANGE = {"koos": [4.0, 6.0], "walk": [15.0, 20.0]}
TRUE_EFFECT = {"koos": [5.0, 4.0], "walk": [20.0, 12.0]}
BASELINE = {"koos": (55.0, 10.0), "walk": (380.0, 60.0)}   # stable level: mean and SD
SITE_SD = {"koos": 4.0, "walk": 25.0}
NOISE_SD = {"koos": 7.0, "walk": 35.0}
RANGE = {"koos": (0.0, 100.0), "walk": (0.0, 900.0)}


def make_cohort(n: int, seed: int, n_sites: int = 12) -> tuple[pd.DataFrame, pd.DataFrame,
                                                                  dict]:
    """Patients and long outcomes (with the registry's column names) and the truth."""
    rng = np.random.default_rng(seed)
    ids = [f"P{i:05d}" for i in range(1, n + 1)]
    site = rng.integers(0, n_sites, n)
    site_names = np.array([f"SITE-{s + 1:02d}" for s in range(n_sites)])
    offer = np.linspace(0.25, 0.65, n_sites)[site]   # programme uptake differs by site
    arm = (rng.random(n) < offer).astype(int)
    enrolled = pd.Timestamp("2021-01-01") + pd.to_timedelta(rng.integers(0, 700, n), "D")
    age_years = rng.normal(66, 9, n).clip(40, 90)
    born = enrolled - pd.to_timedelta(np.round(age_years * 365.25), "D")
    sex = rng.choice(["F", "M"], n, p=[0.6, 0.4])
    bmi = np.round(rng.normal(29.0, 4.5, n), 1)
    patients = pd.DataFrame({
        "pid": ids, "clinic_site": site_names[site],
        "dob": born.strftime("%Y-%m-%d"), "enrolment_date": enrolled.strftime("%Y-%m-%d"),
        "gender": sex, "bmi_kg_m2": bmi,
        "treatment": np.where(arm == 1, "programme", "usual care"),
    })
    site_effect = {name: rng.normal(0, SITE_SD[name], n_sites) for name in BASELINE}
    rows = []
    for name in BASELINE:
        mean, sd = BASELINE[name]
        level = rng.normal(mean, sd, n) + site_effect[name][site] - 0.15 * (age_years - 66) * (
            sd / 10)
        scores = {"0m": level + rng.normal(0, NOISE_SD[name], n)}
        for k, visit in enumerate(list(VISITS)[1:]):
            scores[visit] = (level + CONTROL_CHANGE[name][k] + TRUE_EFFECT[name][k] * arm
                             + rng.normal(0, NOISE_SD[name], n))
        observed_12m = rng.random(n) > 0.12 + 0.1 * (scores["0m"] < mean)   # MAR drop-out
        for visit, values in scores.items():
            keep = np.ones(n, dtype=bool) if visit != "12m" else observed_12m
            values = np.round(np.clip(values, *RANGE[name]), 0 if name == "walk" else 1)
            for i in np.flatnonzero(keep):
                rows.append((ids[i], name, visit, values[i]))
    long = pd.DataFrame(rows, columns=["pid", "measure", "visit", "value"])
    long = long.sort_values(["pid", "measure", "visit"], kind="mergesort").reset_index(drop=True)
    long.insert(0, "row_id", [f"R{i:06d}" for i in range(1, len(long) + 1)])
    long["value"] = long["value"].astype(str)
    # Planted problems (each has one recorded fate in the cleaning ledger).
    patients.loc[4, "enrolment_date"] = "2020-06-30"          # before the window
    patients.loc[9, "dob"] = "2010-05-01"                     # a minor
    long.loc[12, "value"] = "n/a?"                            # unparsable -> set missing
    repeat = long.iloc[[20]].copy()
    repeat["row_id"] = "R999999"
    long = pd.concat([long, repeat], ignore_index=True)       # the same visit recorded twice
    truth = {
        "design": "observational, 12 sites, arm per patient with site-dependent uptake",
        "effects": {name: dict(zip(list(VISITS)[1:], TRUE_EFFECT[name], strict=True))
                    for name in TRUE_EFFECT},
        "primary_followup": "12m",
    }
    return patients, long, truth


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/examples/multisite_long/raw"))
    parser.add_argument("--n", type=int, default=600, help="patients (default 600)")
    parser.add_argument("--seed", type=int, default=2027)
    args = parser.parse_args(argv)
    patients, long, truth = make_cohort(args.n, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    patients.to_csv(args.out / "patients.tsv", sep="\t", index=False)
    long.to_csv(args.out / "visits.tsv", sep="\t", index=False)
    (args.out / "example_truth.json").write_text(json.dumps(truth, indent=2) + "\n")
    print(f"wrote {len(patients)} patients and {len(long)} visit rows to {args.out}")


if __name__ == "__main__":
    main()
