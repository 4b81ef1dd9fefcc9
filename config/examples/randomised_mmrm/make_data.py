"""Generate the raw data of the worked example `randomised_mmrm` (a made-up trial).

A two-arm randomised trial of a graded activity programme versus usual care for chronic low
back pain: one row per participant, outcomes wide (one column per instrument and visit),
baseline and four follow-up visits (weeks 4, 8, 12 and 24), no therapists or sessions, CSV
files with the trial's own column names. Within a participant the errors over the four
follow-ups have an unstructured covariance (variances growing over time, correlations
falling with distance between visits), the pattern an MMRM with unstructured covariance is
for. Drop-out is monotone and more likely after a worse score at the previous visit (missing
at random). Planted recording errors: an exact duplicate row and one out-of-range score.

``example_truth.json`` records the true effects the e2e test checks the pipeline against.

    python config/examples/randomised_mmrm/make_data.py            # -> data/examples/...
    python config/examples/randomised_mmrm/make_data.py --out DIR --n 300 --seed 11
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

VISITS = ("w4", "w8", "w12", "w24")
# Mean follow-up score in usual care (baseline at its mean) and the difference graded
# activity minus usual care at each visit. Lower scores are better (disability).
CONTROL_MEAN = [38.0, 35.0, 33.0, 32.0]
TRUE_EFFECT = [-1.0, -3.0, -4.0, -4.5]
BASELINE_MEAN, BASELINE_SD, BASELINE_SLOPE = 45.0, 9.0, 0.6
SIGMA = np.array([[40.0, 30.0, 26.0, 20.0],
                  [30.0, 55.0, 40.0, 33.0],
                  [26.0, 40.0, 70.0, 50.0],
                  [20.0, 33.0, 50.0, 90.0]])


def make_trial(n: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Participants and wide outcomes (with the trial's column names) and the truth."""
    rng = np.random.default_rng(seed)
    ids = [f"GA{i:04d}" for i in range(1, n + 1)]
    arm = np.concatenate([rng.permutation([1, 1, 0, 0]) for _ in range((n + 3) // 4)])[:n]
    age = np.round(rng.normal(48, 11, n).clip(18, 80)).astype(int)
    sex = rng.choice(["F", "M"], n, p=[0.55, 0.45])
    patients = pd.DataFrame({"Study ID": ids,
                             "Arm": np.where(arm == 1, "graded activity", "usual care"),
                             "Age": age, "Sex": sex})
    baseline = rng.normal(BASELINE_MEAN, BASELINE_SD, n)
    mean = (np.asarray(CONTROL_MEAN)[None, :] + BASELINE_SLOPE * (baseline[:, None]
                                                                  - BASELINE_MEAN)
            + arm[:, None] * np.asarray(TRUE_EFFECT)[None, :])
    scores = mean + rng.multivariate_normal(np.zeros(4), SIGMA, n)
    wide = pd.DataFrame({"Study ID": ids, "RMDQ0": baseline})
    for k, label in enumerate(VISITS):
        wide[f"RMDQ_{label}"] = scores[:, k]
    for column in wide.columns[1:]:
        wide[column] = wide[column].clip(0, 100).round(1)
    gone = np.zeros(n, dtype=bool)
    for k, label in enumerate(VISITS[1:], start=1):
        previous = wide[f"RMDQ_{VISITS[k - 1]}"].to_numpy()
        hazard = 1 / (1 + np.exp(-(-2.8 + 0.06 * (np.nan_to_num(previous, nan=40.0) - 40))))
        gone |= rng.random(n) < hazard
        wide.loc[gone, f"RMDQ_{label}"] = np.nan
    # Out of range -> set missing. At the last visit: responders (baseline to primary) need
    # complete cases to be those with the primary score, which intermittent gaps would break.
    wide.loc[12, "RMDQ_w24"] = 180.0
    patients = pd.concat([patients, patients.iloc[[4]]], ignore_index=True)  # exact duplicate
    truth = {"design": "randomised, 1:1, permuted blocks of 4; no clustering",
             "effects": {"rmdq": dict(zip(VISITS, TRUE_EFFECT, strict=True))},
             "primary_followup": "w24",
             "covariance": SIGMA.tolist(),
             "note": "effects are differences in follow-up means at a given baseline score"}
    return patients, wide, truth


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/examples/randomised_mmrm/raw"))
    parser.add_argument("--n", type=int, default=360, help="participants (default 360)")
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args(argv)
    patients, wide, truth = make_trial(args.n, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    patients.to_csv(args.out / "participants.csv", index=False)
    wide.to_csv(args.out / "scores.csv", index=False)
    (args.out / "example_truth.json").write_text(json.dumps(truth, indent=2) + "\n")
    print(f"wrote {len(patients)} participant rows and {len(wide)} score rows to {args.out}")


if __name__ == "__main__":
    main()
