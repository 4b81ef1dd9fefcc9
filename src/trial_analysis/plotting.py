"""The figure style every stage draws with: palette, rcParams, and deterministic saving.

Shared by the report's figures (``reporting.figures``) and the sensitivity analyses' own
figures (love plot, tipping point in ``causal``), so it lives at the top level, below both:
the causal stage must not import the reporting stage.

Figures use the Okabe-Ito colour-blind-safe palette and are deterministic: the SVG hash salt is
fixed and the date/software metadata are left out, so the same inputs give byte-identical files.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from trial_analysis.io import atomic_path

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Okabe-Ito: distinguishable with every common colour-vision deficiency.
OKABE_ITO = {
    "orange": "#E69F00", "sky": "#56B4E9", "green": "#009E73", "yellow": "#F0E442",
    "blue": "#0072B2", "vermillion": "#D55E00", "purple": "#CC79A7", "black": "#000000",
}
INTERVENTION_COLOUR = OKABE_ITO["blue"]
CONTROL_COLOUR = OKABE_ITO["orange"]
STYLE = {
    "svg.hashsalt": "trial-analysis",
    "svg.fonttype": "path",
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 10,
    "axes.titleweight": "bold",
    "figure.dpi": 100,
}
PNG_DPI = 300  # manuscript resolution; the report embeds these same files


def new_figure(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float],
               **subplot_options: Any) -> tuple[Figure, Any]:
    """A figure on the Agg canvas and its axes (as ``pyplot.subplots`` returns them).

    Figures are drawn without pyplot: its import costs most of a second of every step's
    start-up, and it keeps a registry of open figures that a batch step never needs.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize)
    FigureCanvasAgg(figure)
    return figure, figure.subplots(nrows, ncols, **subplot_options)


def save_figure(figure: Figure, out: Path, name: str) -> list[Path]:
    """Write ``figure`` as ``name.png`` and ``name.svg`` atomically, without dated metadata."""
    written = []
    for ext, metadata in (("png", {"Software": None}), ("svg", {"Date": None, "Creator": None})):
        target = out / f"{name}.{ext}"
        with atomic_path(target) as tmp:
            figure.savefig(tmp, format=ext, dpi=PNG_DPI, metadata=metadata,
                           bbox_inches="tight")
        written.append(target)
    return written
