"""Tests for the shared figure helpers (trial_analysis.plotting): manuscript-ready files."""

from __future__ import annotations

from PIL import Image

from trial_analysis.plotting import new_figure, save_figure


def test_figures_are_png_at_300_dpi_and_svg(tmp_path):
    figure, axes = new_figure(figsize=(4, 3))
    axes.plot([0, 1], [1, 0])
    png, svg = save_figure(figure, tmp_path, "line")
    with Image.open(png) as image:
        dpi = image.info["dpi"]
        width = image.size[0]
    assert abs(dpi[0] - 300) < 0.5 and abs(dpi[1] - 300) < 0.5
    assert width > 3 * 300  # bbox "tight" trims the margins, never the resolution
    text = svg.read_text(encoding="utf-8")
    assert text.lstrip().startswith("<?xml") and "<svg" in text
    assert "<dc:date>" not in text  # no dated metadata: byte-identical reruns
