"""The simulator's stages: each draws only from its own random stream, in a fixed order.

``simulate_extract`` is a short plan of stages (``_draw_therapists``, ``_draw_eligible_patients``,
...), each taking one ``Generator`` of ``simulate.STREAMS``. These tests pin that contract: a
stage repeats itself given the same stream, and replacing one stream leaves every table that
does not draw from it unchanged (the module docstring's promise that changing one component
does not move the others).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from numpy.random import PCG64, Generator, SeedSequence

from trial_analysis.config import load_config
from trial_analysis.simulation import simulate

CONFIG_FILE = Path(__file__).resolve().parents[2] / "config" / "config.yaml"
SEED, N = 20260108, 300


@pytest.fixture(scope="module")
def config() -> dict:
    return load_config(CONFIG_FILE)


def _same_arrays(a: object, b: object) -> None:
    """Exact equality field by field: the same stream must give bit-identical draws."""
    for field in a.__dataclass_fields__:
        x, y = getattr(a, field), getattr(b, field)
        if isinstance(x, dict):
            assert x.keys() == y.keys(), field
            for key in x:
                np.testing.assert_array_equal(x[key], y[key], err_msg=f"{field}[{key}]")
        else:
            np.testing.assert_array_equal(x, y, err_msg=field)


def test_each_stage_repeats_itself_given_its_stream(config):
    def run() -> tuple:
        s = simulate._settings(config, N)
        streams = simulate._streams(SEED)
        staff = simulate._draw_therapists(s, streams["therapists"])
        eligible = simulate._draw_eligible_patients(s, staff, streams["patients"])
        junk = simulate._draw_ineligible_episodes(s, streams["junk"])
        latent = simulate._draw_latent_outcomes(s, staff, eligible, junk, streams["outcomes"])
        allocation = simulate._allocate_etmi(s, staff, eligible, latent, streams["allocation"])
        dates = simulate._draw_dates(s, staff, eligible, allocation, junk, streams["dates"])
        episodes = simulate._join_episodes(s, eligible, junk, allocation, dates, latent,
                                           streams["junk"])
        schedule, rows = simulate._draw_session_schedule(s, staff, episodes,
                                                         streams["sessions"])
        return staff, eligible, junk, latent, allocation, dates, episodes, schedule, rows

    first, second = run(), run()
    for a, b in zip(first, second, strict=True):
        _same_arrays(a, b)
    staff, eligible, junk, *_ = first
    counts = simulate._settings(config, N).counts
    # The stages hit the exact counts they are built for.
    assert staff.adopter.sum() == counts["therapists_adopted"]
    assert (staff.adopter <= staff.trained).all()
    assert eligible.female.sum() == counts["patients_female"]
    assert np.bincount(eligible.therapist, minlength=counts["therapists"]).min() >= 1
    assert (junk.kind == "under_18").sum() == counts["junk_under_18"]


def test_a_stage_reads_only_its_own_stream(config):
    s = simulate._settings(config, N)
    stream = Generator(PCG64(SeedSequence(SEED).spawn(len(simulate.STREAMS))[0]))
    staff = simulate._draw_therapists(s, stream)
    # Same draws as inside the whole simulation: the therapists table comes from stream 0 alone.
    table = simulate.simulate_extract(config, SEED, N).therapists
    np.testing.assert_array_equal(table["age"].to_numpy(), staff.age)
    assert (table["sex"] == "F").to_numpy().tolist() == staff.female.tolist()
    assert table["etmi_training_date"].notna().to_numpy().tolist() == staff.trained.tolist()


# Replacing the named stream must leave these tables unchanged and change the last one.
SWAPS = {
    "patients": (("therapists",), "patients"),
    "sessions": (("therapists", "patients"), "sessions"),
    "missingness": (("therapists", "patients", "sessions"), "outcomes"),
    "ids": (("therapists",), "patients"),
}


@pytest.mark.parametrize("stream", sorted(SWAPS))
def test_replacing_one_stream_moves_only_the_tables_that_draw_from_it(config, monkeypatch,
                                                                      stream):
    unchanged, changed = SWAPS[stream]
    reference = simulate.simulate_extract(config, SEED, N).tables()
    original = simulate._streams

    def swapped(seed: int) -> dict[str, Generator]:
        streams = original(seed)
        streams[stream] = Generator(PCG64(SeedSequence(seed + 1)))
        return streams

    monkeypatch.setattr(simulate, "_streams", swapped)
    tables = simulate.simulate_extract(config, SEED, N).tables()
    for name in unchanged:
        pd.testing.assert_frame_equal(tables[name], reference[name], check_exact=True)
    assert not tables[changed].equals(reference[changed])
