"""Tests for the report figures (trial_analysis.reporting.figures)."""

from __future__ import annotations

import copy

import pandas as pd
import pytest
from report_fixtures import shared_inputs

from trial_analysis.errors import DataError
from trial_analysis.reporting.figures import FIGURE_NAMES, run_figures, sessions_distribution


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    """The shared fixture inputs, with figures drawn twice into separate folders."""
    run = shared_inputs(tmp_path_factory.getbasetemp())
    folders = []
    for name in ("first", "second"):
        out = tmp_path_factory.mktemp(name)
        run_figures(config=run.config, analysis=run.analysis, estimates=run.estimates,
                    tables=run.tables, out=out)
        folders.append(out)
    return run, folders


def test_every_figure_is_written_in_both_formats(drawn):
    _, (first, _) = drawn
    for name in FIGURE_NAMES:
        png = first / f"{name}.png"
        svg = first / f"{name}.svg"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png.stat().st_size > 5_000
        text = svg.read_text(encoding="utf-8")
        assert text.lstrip().startswith("<?xml") and "<svg" in text
    assert not list(first.glob(".*.tmp"))


def test_figures_are_byte_identical_on_rerun(drawn):
    _, (first, second) = drawn
    for name in FIGURE_NAMES:
        for ext in ("png", "svg"):
            assert (first / f"{name}.{ext}").read_bytes() == (second / f"{name}.{ext}").read_bytes()


def test_svg_has_no_date(drawn):
    _, (first, _) = drawn
    for name in FIGURE_NAMES:
        assert "<dc:date>" not in (first / f"{name}.svg").read_text(encoding="utf-8")


def test_axes_are_labelled_with_units(drawn):
    _, (first, _) = drawn
    forest = (first / "forest.svg").read_text(encoding="utf-8")
    # Text is drawn as paths (fonttype path) so labels are checked via the PNG-independent
    # matplotlib objects instead: rebuild one figure and inspect its axes.
    assert "<svg" in forest
    run, _ = drawn
    from trial_analysis.reporting.figures import forest_figure, trajectories_figure
    from trial_analysis.reporting.tables import load_estimates

    estimates = load_estimates(run.estimates, run.config)
    for figure in (forest_figure(estimates, run.config),
                   trajectories_figure(estimates, run.config, "complete_case")):
        for ax in figure.axes:
            assert "score 0-" in ax.get_xlabel() + ax.get_ylabel()


def test_sessions_distribution_withholds_small_bars(drawn):
    run, _ = drawn
    config = copy.deepcopy(run.config)
    intervention, control = config["allocation"]["intervention"], config["allocation"]["control"]
    analysis = pd.DataFrame({
        "arm": [intervention] * 20 + [control] * 20,
        "n_sessions": [1] * 8 + [2] * 10 + [3] * 2 + [1] * 5 + [2] * 5 + [3] * 5 + [9] * 5,
    })
    table = sessions_distribution(analysis, config)
    # The tail pools at 2 (an intervention tail starting at 3 would hold only 2 patients).
    assert list(dict.fromkeys(table["label"])) == ["1", "≥2"]
    shares = table.set_index(["arm", "label"])["share"]
    assert shares[(intervention, "≥2")] == pytest.approx(60.0)
    assert shares[(control, "≥2")] == pytest.approx(75.0)
    analysis.loc[0:5, "n_sessions"] = 2  # 2 intervention patients left with one session
    table = sessions_distribution(analysis, config).set_index(["arm", "label"])
    assert pd.isna(table.loc[(intervention, "1"), "share"])


def test_missing_flow_table_is_a_data_error(drawn, tmp_path):
    run, _ = drawn
    tables = tmp_path / "tables"
    tables.mkdir()
    (tables / "implementation.csv").write_bytes((run.tables / "implementation.csv").read_bytes())
    with pytest.raises(DataError, match="flow.csv"):
        run_figures(config=run.config, analysis=run.analysis, estimates=run.estimates,
                    tables=tables, out=tmp_path / "figures")
    assert not (tmp_path / "figures").exists() or not list((tmp_path / "figures").iterdir())


def test_figures_read_only_the_models_estimates(drawn, tmp_path):
    """The figures rule waits for the model fits only: sessions and responders not needed."""
    run, (first, _) = drawn
    estimates = tmp_path / "estimates"
    estimates.mkdir()
    for path in run.estimates.glob("*.json"):
        if path.stem not in ("sessions", "responders"):
            (estimates / path.name).write_bytes(path.read_bytes())
    out = tmp_path / "figures"
    run_figures(config=run.config, analysis=run.analysis, estimates=estimates,
                tables=run.tables, out=out)
    for name in FIGURE_NAMES:
        assert (out / f"{name}.png").read_bytes() == (first / f"{name}.png").read_bytes()


def _drawn_figures(run):
    """The report figures as matplotlib objects, drawn from the fixture's inputs."""
    import matplotlib

    from trial_analysis.plotting import STYLE
    from trial_analysis.reporting.figures import (
        flow_figure,
        forest_figure,
        implementation_figure,
    )
    from trial_analysis.reporting.tables import load_estimates

    estimates = load_estimates(run.estimates, run.config, secondary=False)
    with matplotlib.rc_context(STYLE):
        return {
            "forest": forest_figure(estimates, run.config),
            "flow": flow_figure(pd.read_csv(run.tables / "flow.csv")),
            "implementation": implementation_figure(
                pd.read_csv(run.tables / "implementation.csv")),
        }, estimates


def test_forest_labels_and_points_read_back_match_table_4(drawn):
    """Each panel's drawn tick labels and points are its own outcome's rows of Table 4."""
    import re

    from trial_analysis.reporting.tables import fmt_p, subgroup_estimates

    run, _ = drawn
    figures, estimates = _drawn_figures(run)
    table4 = subgroup_estimates(estimates, run.config, None)
    axes = figures["forest"].axes
    outcomes = [o["name"] for o in run.config["outcomes"]]
    assert len(axes) == len(outcomes)
    seen_p = set()
    for ax, outcome in zip(axes, outcomes, strict=True):
        figures["forest"].canvas.draw()
        drawn_labels = {round(tick.get_position()[1]): tick.get_text()
                        for tick in ax.get_yticklabels()}
        rows = table4[table4["outcome"] == outcome]
        for subgroup, part in rows.groupby("subgroup"):
            header = next(text for text in drawn_labels.values()
                          if "heterogeneity p" in text and text.lower().startswith(
                              str(subgroup).replace("_", " ")))
            shown = re.search(r"heterogeneity p [=<] ?([0-9.<]+)\)", header).group(1)
            expected = fmt_p(float(part["p_heterogeneity"].iloc[0]))
            assert shown == expected.lstrip("<"), (outcome, subgroup, header, expected)
            seen_p.add(expected)
        # The diamonds and dots: every level estimate of Table 4 is drawn on this panel.
        points = sorted(float(line.get_xdata()[0]) for line in ax.get_lines()
                        if len(line.get_xdata()) == 1)
        for estimate in rows.loc[rows["level"] != "heterogeneity", "estimate"]:
            assert min(abs(p - float(estimate)) for p in points) < 1e-9
    # The outcomes' p-values differ in the fixture, so a shared axis would fail above.
    assert len(seen_p) > 1


def test_flow_and_implementation_text_read_back_match_their_tables(drawn):
    run, _ = drawn
    figures, _ = _drawn_figures(run)
    flow = pd.read_csv(run.tables / "flow.csv")
    flow_text = "\n".join(t.get_text() for t in figures["flow"].axes[0].texts)
    for n in flow.loc[flow["n_excluded"].isna(), "n"]:
        assert f"(n = {int(n)})" in flow_text
    implementation = pd.read_csv(run.tables / "implementation.csv")
    bar_text = [t.get_text() for t in figures["implementation"].axes[0].texts]
    for (_, row), text in zip(implementation.iterrows(), bar_text, strict=True):
        percent = 100 * row["numerator"] / row["denominator"]
        assert text == f"{percent:.1f}% ({row['numerator']}/{row['denominator']})"


def test_flow_diagram_follows_the_design_and_shows_every_population(drawn):
    """STROBE wording and title for an observational cohort, CONSORT for a randomised trial;
    one level of boxes per analysed population, with N per arm; record-level cleaning noted
    with its aggregate reasons and counts."""
    import copy

    from trial_analysis.reporting.figures import flow_figure, flow_layout

    run, _ = drawn
    flow = pd.read_csv(run.tables / "flow.csv")
    levels = flow_layout(flow)
    populations = [[str(b["description"]) for b in level["boxes"]] for level in levels
                   if level["step"] == "analysis"]
    assert populations == [
        ["all with a baseline analysed", "all with a baseline analysed, ETMI",
         "all with a baseline analysed, usual care"],
        ["complete cases analysed", "complete cases analysed, ETMI",
         "complete cases analysed, usual care"]]
    figure = flow_figure(flow, run.config)
    ax = figure.axes[0]
    text = "\n".join(t.get_text() for t in ax.texts)
    assert ax.get_title(loc="left").startswith("STROBE")
    assert "ETMI group" in text and "allocated" not in text
    assert "Record-level cleaning" in text
    assert "outcome records dropped: 6 of" in text and "exact duplicate of another record" in text
    assert "row N" not in text
    config = copy.deepcopy(run.config)
    config["study"]["design"] = "randomised"
    assert flow_figure(flow, config).axes[0].get_title(loc="left").startswith("CONSORT")


def test_the_flow_diagram_draws_suppressed_counts():
    """Counts below report.min_cell_count reach flow.csv as "<5" (cohort.disclosure)."""
    from trial_analysis.reporting.figures import flow_figure

    flow = pd.DataFrame({
        "step": ["extract", "clean", "clean", "eligibility", "eligibility", "eligibility"],
        "description": ["episodes", "dropped in cleaning", "after cleaning",
                        "excluded as ineligible", "excluded as ineligible", "eligible"],
        "n": ["500", "498", "498", "440", "400", "400"],
        "n_excluded": ["", "<5", "", "58", "40", ""],
        "reason": ["", "exact duplicate", "", "window; or age", "no code", ""],
    })
    figure = flow_figure(flow)
    texts = [t.get_text() for t in figure.axes[0].texts]
    assert any("<5" in t for t in texts)


def test_the_flow_diagram_draws_a_secondarily_suppressed_box():
    """A box suppressed so that a small exclusion cannot be read off by subtraction."""
    from trial_analysis.reporting.figures import flow_figure

    flow = pd.DataFrame({
        "step": ["extract", "clean", "clean"],
        "description": ["episodes", "dropped in cleaning", "after cleaning"],
        "n": ["suppressed", "498", "498"],
        "n_excluded": ["", "<5", ""],
        "reason": ["", "exact duplicate", ""],
    })
    texts = [t.get_text() for t in flow_figure(flow).axes[0].texts]
    assert any("suppressed" in t for t in texts)
    assert not any("None" in t for t in texts)
