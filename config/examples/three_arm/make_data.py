"""Generate the raw data of the worked example `three_arm` (a made-up three-arm trial).

A randomised trial of two doses of a graded exercise programme (low and high) against a
placebo-style attention control for chronic low back pain: 270 participants randomised 1:1:1
in permuted blocks of 6, one row per participant, disability scores (0-100, lower is better)
at baseline and 6 and 12 weeks in the wide layout, CSV files with the trial's own column
names. Participants are independent. Drop-out is monotone and depends on the baseline score
(missing at random). A few recording errors are planted so the cleaning ledger has something
to show: an exact duplicate row and an out-of-range score.

``example_truth.json`` records the true effects (each dose against control) the e2e test
checks the pipeline against.

    python config/examples/three_arm/make_data.py            # -> data/examples/three_arm/raw
    python config/examples/three_arm/make_data.py --out DIR --n 270 --seed 3
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

ARMS = ("control", "low dose", "high dose")
FOLLOWUPS = {"w6": 6, "w12": 12}
CONTROL_CHANGE = [-4.0, -6.0]          # mean change from baseline in the control arm
TRUE_EFFECT = {"low dose": [-2.0, -3.0], "high dose": [-4.0, -6.0]}  # dose minus control


def make_trial(n: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Participants and wide outcomes (with the trial's column names) and the truth."""
    rng = np.random.default_rng(seed)
    ids = [f"TA{i:04d}" for i in range(1, n + 1)]
    arm = np.concatenate([rng.permutation(np.repeat(np.arange(3), 2))
                          for _ in range((n + 5) // 6)])[:n]
    labels = np.array(ARMS)[arm]
    age = np.round(rng.normal(48, 11, n).clip(18, 80)).astype(int)
    sex = rng.choice(["F", "M"], n, p=[0.6, 0.4])
    patients = pd.DataFrame({"Subject": ids, "Treatment group": labels, "Age": age, "Sex": sex})
    level = rng.normal(44.0, 9.0, n) + 0.1 * (age - 48)
    wide = pd.DataFrame({"Subject": ids})
    wide["DISAB_baseline"] = level + rng.normal(0, 6.0, n)
    for k, label in enumerate(FOLLOWUPS):
        effect = np.array([0.0 if a == "control" else TRUE_EFFECT[a][k] for a in labels])
        wide[f"DISAB_{label}"] = level + CONTROL_CHANGE[k] + effect + rng.normal(0, 6.0, n)
    for column in wide.columns[1:]:
        wide[column] = wide[column].clip(0, 100).round(0)
    hazard = 0.06 + 0.05 * (wide["DISAB_baseline"].to_numpy() > 50)
    gone = np.zeros(n, dtype=bool)
    for label in FOLLOWUPS:
        gone |= rng.random(n) < hazard
        wide.loc[gone, f"DISAB_{label}"] = np.nan
    wide.loc[4, "DISAB_w6"] = 180.0                          # out of range -> set missing
    patients = pd.concat([patients, patients.iloc[[9]]], ignore_index=True)  # exact duplicate
    truth = {
        "design": "randomised 1:1:1, permuted blocks of 6; no clustering",
        "arms": list(ARMS), "reference": "control",
        "effects": {a: dict(zip(FOLLOWUPS, v, strict=True)) for a, v in TRUE_EFFECT.items()},
        "primary_followup": "w12",
    }
    return patients, wide, truth


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/examples/three_arm/raw"))
    parser.add_argument("--n", type=int, default=270, help="participants (default 270)")
    parser.add_argument("--seed", type=int, default=2027)
    args = parser.parse_args(argv)
    patients, wide, truth = make_trial(args.n, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    patients.to_csv(args.out / "participants.csv", index=False)
    wide.to_csv(args.out / "scores.csv", index=False)
    (args.out / "example_truth.json").write_text(json.dumps(truth, indent=2) + "\n")
    print(f"wrote {len(patients)} participant rows and {len(wide)} score rows to {args.out}")


if __name__ == "__main__":
    main()
