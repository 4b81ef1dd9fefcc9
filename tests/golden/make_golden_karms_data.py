"""Write the committed dataset of the k-arm golden tests (``tests/golden/data/karms.csv``).

Run from the repository root: ``.venv/bin/python tests/golden/make_golden_karms_data.py``.
A made-up three-arm trial (Placebo, Low, High; 31, 33 and 35 patients, so the design is
unbalanced and Dunnett's and Tukey's critical values are not the balanced textbook ones):
age, sex, a baseline score and three follow-up visits v1, v2, v3 with correlated errors, a
few follow-ups missing. One row per patient (wide): ``id, arm, age, sex, y0, y1, y2, y3``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

ARMS = ("Placebo", "Low", "High")
SIZES = (31, 33, 35)
# Extra improvement over placebo at v1, v2, v3 (lower scores are worse here: a gain).
EFFECT = {"Placebo": (0.0, 0.0, 0.0), "Low": (1.0, 2.0, 2.5), "High": (2.0, 3.5, 4.5)}
SIGMA = np.array([[49.0, 30.0, 25.0, 20.0],
                  [30.0, 42.0, 28.0, 24.0],
                  [25.0, 28.0, 48.0, 33.0],
                  [20.0, 24.0, 33.0, 56.0]])


def simulate(seed: int = 20261207) -> pd.DataFrame:
    """The wide table of the three-arm golden tests."""
    rng = np.random.default_rng(seed)
    arm = np.array([a for a, n in zip(ARMS, SIZES, strict=True) for _ in range(n)])
    arm = arm[rng.permutation(len(arm))]
    n = len(arm)
    age = np.round(rng.normal(55, 10, n), 1)
    sex = rng.choice(["F", "M"], n, p=[0.55, 0.45])
    errors = rng.multivariate_normal(np.zeros(4), SIGMA, n)
    base = 40 - 0.1 * (age - 55) + 1.5 * (sex == "M")
    y = np.empty((n, 4))
    y[:, 0] = base + errors[:, 0]
    for t in range(1, 4):
        gain = np.array([EFFECT[a][t - 1] for a in arm])
        y[:, t] = base + 2.0 * t + gain + errors[:, t]
    y = np.round(y, 2)
    missing = rng.random((n, 4)) < np.array([0.0, 0.05, 0.08, 0.10])
    y[missing] = np.nan
    frame = pd.DataFrame({"id": [f"k{i + 1:03d}" for i in range(n)], "arm": arm, "age": age,
                          "sex": sex})
    for t in range(4):
        frame[f"y{t}"] = y[:, t]
    return frame


def main() -> None:
    out = Path(__file__).parent / "data" / "karms.csv"
    simulate().to_csv(out, index=False)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
