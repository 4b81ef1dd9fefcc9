"""Manuscript exports (step ``exports``): the main tables as Word (.docx) and LaTeX files.

Table 1, the primary results table and the sensitivity table are written beside the CSVs of
the ``tables`` step, each as ``<name>.docx`` (python-docx; three-line table, footnotes under
it, as gtsummary/flextable give them) and ``<name>.tex`` (a ``table`` float with booktabs
rules and the footnotes under the tabular). The sensitivity table's CSV is written here too,
as the report shows it (Table S1), since no other step writes it.

The cells are the report's own, formatted by the same functions, so the Word table, the LaTeX
table and the HTML report cannot disagree. Outputs are byte-identical for the same inputs:
the .docx package's document dates and ZIP member timestamps are fixed (``SOURCE_DATE_EPOCH``
or 2000-01-01).
"""

from __future__ import annotations

import datetime as dt
import io
import os
import re
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from trial_analysis.config import arm_labels, confidence_level
from trial_analysis.errors import DataError
from trial_analysis.io import atomic_path, write_csv
from trial_analysis.reporting.report import (
    arms_context,
    primary_rows,
    sensitivity_section,
    study_schedule,
)
from trial_analysis.reporting.tables import fmt_number, table1_groups
from trial_analysis.reporting.wording import design_wording

EXPORT_NAMES = ("table1", "primary_estimates", "sensitivity")
_FIXED_DATE = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True)
class ExportTable:
    """One manuscript table: a title, a header, body rows of text, footnotes.

    A row whose only non-empty cell is the first is a group heading (e.g. the population of
    a Table 1 block) and spans the table in both formats.
    """

    title: str
    header: list[str]
    rows: list[list[str]]
    footnotes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------
def table1_export(frame: pd.DataFrame, config: Mapping[str, Any]) -> ExportTable:
    """Table 1 (baseline characteristics by group) from ``table1.csv`` read as strings."""
    intervention, control = arm_labels(config)
    groups = table1_groups(config)
    # With three or more arms a column per arm and no SMD (a two-group measure).
    several = len(groups) > 2
    keys = [key for key, _ in groups] + ([] if several else ["smd"])
    rows: list[list[str]] = []
    for population, part in frame.groupby("population", sort=False):
        rows.append([str(population)] + [""] * (3 + len(keys)))
        for r in part.to_dict("records"):
            first = r["variable"] if (r["level"] == "" or r["missing"] != "") else ""
            rows.append([first, r["level"], r["missing"], r["overall"],
                         *(r[key] for key in keys)])
    summary = ("median [Q1, Q3]" if config["report"]["continuous_summary"] == "median_iqr"
               else "mean (SD)")
    cells = config["report"]["min_cell_count"]
    return ExportTable(
        title="Table 1. Baseline characteristics by group.",
        header=["Characteristic", "", "Missing", "Overall",
                *([name for _, name in groups] if several else [intervention, control, "SMD"])],
        rows=rows,
        footnotes=[
            f"Continuous variables: {summary}; categorical: n (%) of patients with a "
            "recorded value.",
            f"SMD: standardized mean difference, {intervention} minus {control} for "
            "continuous characteristics (unsigned for categorical ones)." if not several
            else f"One column per arm ({len(groups)} arms).",
            f"Counts of 1 to {cells - 1} patients are shown as <{cells}; the other counts of "
            "the same characteristic and its SMD are then shown as \"suppressed\".",
        ],
    )


def _truth_note(simulated: bool) -> list[str]:
    return (["True value: the effect planted in the simulated data (truth.json)."]
            if simulated else [])


def primary_export(rows: Sequence[Mapping[str, str]], config: Mapping[str, Any],
                   simulated: bool) -> ExportTable:
    """The primary results table (the report's Table 3)."""
    intervention, control = arm_labels(config)
    level = int(round(100 * confidence_level(config)))
    schedule = study_schedule(config)
    words = design_wording(config)
    clustered = words["clustered"]  # no Clusters column when it would repeat Patients
    header = ["Outcome", "Population", "Patients",
              *([f"Clusters ({words['cluster_level']})"] if clustered else []),
              "Difference", f"{level}% CI", "p"]
    arms = arms_context(config)
    several = arms["several"]
    if several:
        header[2:2] = ["Contrast"]
        header += [f"Adjusted {level}% CI", "Adjusted p"]
    body = [[r["outcome"], r["population"], *([r["contrast"]] if several else []), str(r["n"]),
             *([str(r["clusters"])] if clustered else []), r["estimate"], r["ci"], r["p"],
             *([r["ci_adjusted"], r["p_adjusted"]] if several else [])]
            + ([r["truth"]] if simulated else []) for r in rows]
    model = words["model"]
    return ExportTable(
        title=f"Table 2. Difference between groups in {schedule['estimand']} "
              + ("(first arm minus second)" if several else f"({intervention} minus {control})")
              + f", adjusted, with {level}% CI.",
        header=header + (["True value"] if simulated else []),
        rows=body,
        footnotes=[
            f"Estimated by a {model} per outcome, adjusted for "
            + (", ".join(config["analysis"].get("covariates") or []) or "no covariates")
            + "; CI: confidence interval.",
            *(["Clusters: units of the outermost random effect."] if clustered else []),
            *([f"Contrasts: {arms['family']} ({arms['n_comparisons']} comparisons), "
               f"{arms['multiplicity']}."] if several else []),
            *_truth_note(simulated),
        ],
    )


def sensitivity_export(section: Mapping[str, Any], config: Mapping[str, Any],
                       simulated: bool) -> ExportTable:
    """The sensitivity table (the report's Table S1), with tipping points as footnotes."""
    intervention, control = arm_labels(config)
    level = int(round(100 * confidence_level(config)))
    header = ["Outcome", "Method", "Model form", "Patients", "Difference", f"{level}% CI", "p"]
    body = [[r["outcome"], r["method"], r.get("form", ""), str(r["n"]), r["estimate"], r["ci"],
             r["p"]] + ([r.get("truth", "")] if simulated else []) for r in section["effects"]]
    words = design_wording(config)
    primary = (f"{words['model_short'].capitalize()}: {words['quantity']}"
               + (", adjusted for the observed baseline score and the covariates."
                  if words["ancova"] else
                  ", adjusted for the covariates' effects on level and change."))
    notes = [
        primary + " Lagged-outcome (ANCOVA) rows: follow-up score adjusted for the observed "
        "baseline score; change-score rows: change from baseline; doubly robust rows: "
        "propensity and outcome models, both with the baseline score.",
    ]
    # the report's own sentence, so the export and the report say the same
    notes += [f"Tipping point, {t['outcome']}, {t.get('form', '')}: {t['sentence']}"
              for t in section["tipping"]]
    return ExportTable(
        title=f"Table S1. Difference between groups ({intervention} minus {control}) by "
              "method of adjustment and of handling missing data.",
        header=header + (["True value"] if simulated else []),
        rows=body, footnotes=notes + _truth_note(simulated),
    )


# --------------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------------
def _fixed_date() -> dt.datetime:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    return dt.datetime.fromtimestamp(int(epoch), tz=dt.UTC) if epoch else _FIXED_DATE


def _is_heading(row: Sequence[str]) -> bool:
    return bool(row[0]) and not any(row[1:])


def _set_border(cell: Any, **edges: int) -> None:
    """Border lines (size in eighths of a point) on ``cell``: top=..., bottom=..."""
    from docx.oxml import OxmlElement
    from docx.oxml.ns import qn

    properties = cell._tc.get_or_add_tcPr()
    borders = properties.find(qn("w:tcBorders"))
    if borders is None:
        borders = OxmlElement("w:tcBorders")
        properties.append(borders)
    for edge, size in edges.items():
        element = OxmlElement(f"w:{edge}")
        element.set(qn("w:val"), "single")
        element.set(qn("w:sz"), str(size))
        element.set(qn("w:color"), "000000")
        borders.append(element)


def docx_bytes(table: ExportTable) -> bytes:
    """The table as a Word document: title, a three-line table, footnotes in small type."""
    import docx
    from docx.shared import Pt

    document = docx.Document()
    date = _fixed_date().replace(tzinfo=None)
    document.core_properties.created = date
    document.core_properties.modified = date
    document.core_properties.last_printed = date
    document.core_properties.author = "trial-analysis"
    document.core_properties.last_modified_by = "trial-analysis"
    document.core_properties.revision = 1
    title = document.add_paragraph()
    title.add_run(table.title).bold = True
    grid = document.add_table(rows=1 + len(table.rows), cols=len(table.header))
    for j, text in enumerate(table.header):
        cell = grid.cell(0, j)
        cell.text = text
        cell.paragraphs[0].runs[0].bold = True
        _set_border(cell, top=12, bottom=6)
    for i, row in enumerate(table.rows, start=1):
        if _is_heading(row):
            merged = grid.cell(i, 0).merge(grid.cell(i, len(row) - 1))
            merged.text = row[0]
            merged.paragraphs[0].runs[0].italic = True
        else:
            for j, text in enumerate(row):
                grid.cell(i, j).text = text
    for cell in grid.rows[-1].cells:
        _set_border(cell, bottom=12)
    for row in grid.rows:
        for cell in row.cells:
            for paragraph in cell.paragraphs:
                for run in paragraph.runs:
                    run.font.size = Pt(9)
    for note in table.footnotes:
        paragraph = document.add_paragraph()
        paragraph.add_run(note).font.size = Pt(8)
    buffer = io.BytesIO()
    document.save(buffer)
    return _normalised_zip(buffer.getvalue())


def _normalised_zip(data: bytes) -> bytes:
    """The same ZIP with every member's timestamp fixed: byte-identical on every run."""
    stamp = _fixed_date().timetuple()[:6]
    stamp = max(stamp, (1980, 1, 1, 0, 0, 0))  # the earliest date ZIP can store
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as source, \
            zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        for info in source.infolist():
            member = zipfile.ZipInfo(info.filename, date_time=stamp)
            member.compress_type = zipfile.ZIP_DEFLATED
            member.external_attr = 0o644 << 16
            target.writestr(member, source.read(info.filename))
    return out.getvalue()


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                  "^": r"\textasciicircum{}", "<": r"\textless{}", ">": r"\textgreater{}",
                  "–": "--", "−": "$-$", "×": r"$\times$"}


def latex_escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped (so any label prints as written);
    a minus sign before a number is set as one (``$-$``), not as a hyphen."""
    escaped = "".join(_LATEX_SPECIAL.get(char, char) for char in str(text))
    return re.sub(r"(?<![\w.])-(?=\d)", "$-$", escaped)


def latex_text(table: ExportTable, label: str) -> str:
    """The table as a LaTeX ``table`` float (needs the booktabs package)."""
    columns = len(table.header)
    align = "ll" + "r" * (columns - 2) if columns > 2 else "l" * columns
    lines = [
        "% Generated by trial-analysis (reporting/exports.py); needs \\usepackage{booktabs}.",
        "\\begin{table}[htbp]", "\\centering", "\\small",
        f"\\caption{{{latex_escape(table.title)}}}", f"\\label{{tab:{label}}}",
        f"\\begin{{tabular}}{{{align}}}", "\\toprule",
        " & ".join(latex_escape(h) for h in table.header) + " \\\\", "\\midrule",
    ]
    for row in table.rows:
        if _is_heading(row):
            lines.append(f"\\multicolumn{{{columns}}}{{l}}{{\\textit{{{latex_escape(row[0])}}}}}"
                         " \\\\")
        else:
            lines.append(" & ".join(latex_escape(c) for c in row) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    if table.footnotes:
        lines += ["", "\\par\\medskip", "\\begin{minipage}{\\linewidth}\\footnotesize"]
        lines += [latex_escape(note) + " \\par" for note in table.footnotes]
        lines.append("\\end{minipage}")
    lines.append("\\end{table}")
    return "\n".join(lines) + "\n"


def write_export(table: ExportTable, folder: Path, name: str) -> dict[str, Path]:
    """Write ``name``.docx and ``name``.tex into ``folder`` (atomically)."""
    written = {}
    with atomic_path(folder / f"{name}.docx") as tmp:
        tmp.write_bytes(docx_bytes(table))
    written["docx"] = folder / f"{name}.docx"
    with atomic_path(folder / f"{name}.tex") as tmp:
        tmp.write_text(latex_text(table, name), encoding="utf-8")
    written["tex"] = folder / f"{name}.tex"
    return written


def _read(folder: Path, name: str) -> pd.DataFrame:
    path = folder / f"{name}.csv"
    if not path.is_file():
        raise DataError(str(path), "table is missing", hint="run the `tables` step first")
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def run_exports(config: dict[str, Any], estimates: str | Path, tables: str | Path
                ) -> dict[str, dict[str, Path]]:
    """Write the manuscript tables as .docx and .tex beside the CSVs (step ``exports``).

    Parameters
    ----------
    config : dict
        Validated study configuration.
    estimates : path
        Folder of estimate files; ``sensitivity.*.json`` there feed the sensitivity table
        (written only when a sensitivity analysis ran).
    tables : path
        Folder of the ``tables`` step's CSVs; the exports are written into it.

    Returns
    -------
    dict
        Export name -> {"docx": path, "tex": path} (and "csv" for the sensitivity table).
    """
    tables, estimates = Path(tables), Path(estimates)
    primary_frame = _read(tables, "primary_estimates")
    table1 = table1_export(_read(tables, "table1"), config)
    simulated = bool((primary_frame["true_value"] != "").any())
    rows = primary_rows(primary_frame, config)
    primary = primary_export(rows, config, simulated)
    truth = {r["outcome"]: fmt_number(float(r["true_value"]))
             for r in primary_frame.to_dict("records") if r["true_value"]}
    section = sensitivity_section(estimates, tables / "no-figures", rows, truth, config)
    written = {"table1": write_export(table1, tables, "table1"),
               "primary_estimates": write_export(primary, tables, "primary_estimates")}
    if section["ran"]:
        sensitivity = sensitivity_export(section, config, simulated)
        written["sensitivity"] = write_export(sensitivity, tables, "sensitivity")
        frame = pd.DataFrame(sensitivity.rows, columns=sensitivity.header)
        written["sensitivity"]["csv"] = write_csv(frame, tables / "sensitivity.csv")
    return written
