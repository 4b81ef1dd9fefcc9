"""Generate the raw data of the worked example `randomised_wide` (a made-up trial).

A two-arm randomised trial of supervised exercise versus advice for chronic low back pain:
one row per participant, outcomes in the wide layout (one column per instrument and
assessment), baseline and four follow-ups (2, 4, 6 and 8 months), no therapists or sessions,
stored as Excel workbooks with the trial's own column names. Participants are independent
(no clustering); each has a random intercept. Drop-out rises over time and depends on the
baseline score (missing at random). A few recording errors are planted so the cleaning ledger
has something to show: an exact duplicate row, two out-of-range scores and a minor.

``example_truth.json`` records the true effects the e2e test checks the pipeline against.

    python config/examples/randomised_wide/make_data.py            # -> data/examples/...
    python config/examples/randomised_wide/make_data.py --out DIR --n 300 --seed 7
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

FOLLOWUPS = {"m2": 2, "m4": 4, "m6": 6, "m8": 8}
# Mean change from baseline in the advice (control) arm, and the extra change with
# exercise (intervention minus control) at each follow-up. Lower scores are better.
CONTROL_CHANGE = {"odi": [-6.0, -9.0, -10.0, -11.0], "pain": [-1.2, -1.6, -1.8, -1.9]}
TRUE_EFFECT = {"odi": [-2.0, -4.0, -5.0, -5.0], "pain": [-0.4, -0.7, -0.8, -0.8]}
BASELINE = {"odi": (46.0, 8.0), "pain": (6.2, 1.0)}  # mean and SD of the stable level
NOISE_SD = {"odi": 6.0, "pain": 1.0}
RANGE = {"odi": (0.0, 100.0), "pain": (0.0, 10.0)}
DIGITS = {"odi": 0, "pain": 1}


def make_trial(n: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Participants and wide outcomes (with the trial's column names) and the truth."""
    rng = np.random.default_rng(seed)
    ids = [f"EX{i:04d}" for i in range(1, n + 1)]
    # Permuted blocks of 4: the arms stay balanced throughout recruitment.
    arm = np.concatenate([rng.permutation([1, 1, 0, 0]) for _ in range((n + 3) // 4)])[:n]
    age = np.round(rng.normal(52, 12, n).clip(19, 85)).astype(int)
    sex = rng.choice(["F", "M"], n, p=[0.58, 0.42])
    smoker = (rng.random(n) < 0.22).astype(int)
    bmi = np.round(rng.normal(27.5, 4.0, n), 1)
    patients = pd.DataFrame({
        "Participant": ids,
        "Randomised group": np.where(arm == 1, "exercise", "advice"),
        "Age (years)": age, "Sex": sex, "Smoker": smoker, "BMI": bmi,
    })
    wide = pd.DataFrame({"Participant": ids})
    for name in ("odi", "pain"):
        mean, sd = BASELINE[name]
        level = rng.normal(mean, sd, n) + 0.08 * (age - 52) * (sd / 8)
        wide[f"{name.upper()}_baseline"] = level + rng.normal(0, NOISE_SD[name], n)
        for k, label in enumerate(FOLLOWUPS):
            change = CONTROL_CHANGE[name][k] + TRUE_EFFECT[name][k] * arm
            wide[f"{name.upper()}_{label}"] = level + change + rng.normal(0, NOISE_SD[name], n)
    for column in wide.columns[1:]:
        name = column.split("_")[0].lower()
        wide[column] = wide[column].clip(*RANGE[name]).round(DIGITS[name])
    # Drop-out: monotone, more likely with a worse (higher) baseline disability.
    hazard = 0.05 + 0.04 * (wide["ODI_baseline"].to_numpy() > 50)
    gone = np.zeros(n, dtype=bool)
    for label in FOLLOWUPS:
        gone |= rng.random(n) < hazard
        for name in ("ODI", "PAIN"):
            wide.loc[gone, f"{name}_{label}"] = np.nan
    # Planted recording errors (each has one recorded fate in the cleaning ledger).
    wide.loc[3, "ODI_m4"] = 140.0          # out of range -> set missing
    wide.loc[10, "PAIN_m2"] = -3.0         # out of range -> set missing
    patients.loc[7, "Age (years)"] = 16    # a minor -> excluded by the age rule
    patients = pd.concat([patients, patients.iloc[[5]]], ignore_index=True)  # exact duplicate
    truth = {
        "design": "randomised, 1:1, permuted blocks of 4; no clustering",
        "effects": {name: dict(zip(FOLLOWUPS, TRUE_EFFECT[name], strict=True))
                    for name in TRUE_EFFECT},
        "primary_followup": "m8",
        "note": "scores are clipped to the instrument range (rare at these means)",
    }
    return patients, wide, truth


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/examples/randomised_wide/raw"))
    parser.add_argument("--n", type=int, default=400, help="participants (default 400)")
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args(argv)
    patients, wide, truth = make_trial(args.n, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    patients.to_excel(args.out / "participants.xlsx", index=False)
    wide.to_excel(args.out / "scores.xlsx", index=False)
    (args.out / "example_truth.json").write_text(json.dumps(truth, indent=2) + "\n")
    print(f"wrote {len(patients)} participant rows and {len(wide)} score rows to {args.out}")


if __name__ == "__main__":
    main()
