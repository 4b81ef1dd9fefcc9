"""The self-contained HTML report (step ``report``): what a reviewer reads.

One HTML file with inline CSS and the figures embedded as base64 PNG, so it opens offline and
makes no network request. It holds study and design (STROBE wording for observational studies,
CONSORT for randomised), the flow diagram, Table 1, implementation outcomes, estimates,
subgroups, trajectories, sessions, responders, variance components, model specifications and
warnings, the reproduction check, the simulation assumptions and the provenance of the run.

Privacy: the report reads only aggregate tables, estimate files and figures, never the analysis
table, so no identifier or patient row can reach it; Table 1 arrives with small cells already
suppressed by the ``tables`` step.

Determinism: everything except the provenance facts that describe the run itself (date, rule
run times, git commit) is a function of the inputs. Set ``SOURCE_DATE_EPOCH`` to fix the date.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import importlib.metadata
import json
import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd
import yaml

from trial_analysis import __version__
from trial_analysis.config import (
    arm_labels,
    confidence_level,
    followup_labels,
    has_table,
    primary_followup,
)
from trial_analysis.errors import DataError
from trial_analysis.io import atomic_path
from trial_analysis.reporting.figures import FIGURE_NAMES, figure_names
from trial_analysis.reporting.tables import (
    TABLE_NAMES,
    fmt_ci,
    fmt_number,
    fmt_p,
    load_estimates,
    load_truth,
    outcome_label,
)

PACKAGES = ["pandas", "numpy", "scipy", "statsmodels", "matplotlib", "snakemake", "pandera",
            "tableone", "jinja2", "trial-analysis"]
POPULATION_NAMES = {"complete_case": "complete cases", "all_available": "all with a baseline"}
FIGURE_CAPTIONS = {
    "flow": "Flow of referral episodes and patients through cleaning, eligibility, allocation "
            "and complete-case selection, computed from the record ledger.",
    "trajectories": "Adjusted mean score by arm at baseline and follow-up (95% CI), from the "
                    "primary mixed model in complete cases.",
    "forest": "Difference between arms in mean change, baseline to follow-up (95% CI), by "
              "analysis population and within subgroup levels, with p-values of the test of "
              "heterogeneity.",
    "sessions": "Distribution of the number of treatment sessions by arm (percentage of the "
                "arm). The upper tail is pooled and bars with fewer patients than the minimum "
                "cell count are not drawn.",
    "implementation": "Implementation outcomes: reach, adoption and fidelity, with numerators "
                      "and denominators.",
}


# --------------------------------------------------------------------------------------------
# Provenance
# --------------------------------------------------------------------------------------------
def sha256_file(path: Path) -> str:
    """SHA-256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_checksums(folder: str | Path) -> pd.DataFrame:
    """SHA-256 and size of every file under ``folder`` (recursively), sorted by path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(str(folder), "the raw extract folder does not exist")
    rows = [
        {"file": path.relative_to(folder).as_posix(), "bytes": path.stat().st_size,
         "sha256": sha256_file(path)}
        for path in sorted(p for p in folder.rglob("*") if p.is_file())
    ]
    return pd.DataFrame(rows, columns=["file", "bytes", "sha256"])


def package_versions(names: list[str] | None = None) -> pd.DataFrame:
    """Installed versions of the packages the analysis depends on."""
    rows = []
    for name in names or PACKAGES:
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            version = "not installed"
        rows.append({"package": name, "version": version})
    return pd.DataFrame(rows)


def git_commit(where: str | Path | None = None) -> str:
    """The git commit of the working directory, or ``"not a git checkout"``."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where or Path.cwd(), capture_output=True,
            text=True, timeout=10, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "not a git checkout"
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and commit else "not a git checkout"


def benchmark_times(folder: str | Path | None) -> pd.DataFrame:
    """Run time and peak memory of each rule from Snakemake benchmark files.

    A benchmark file is a TSV with a header ``s h:m:s max_rss ...``; the job is named after
    the file (``sensitivity.propensity.tsv`` -> ``sensitivity.propensity``). Repeated
    measurements in one file are averaged.
    """
    columns = ["job", "seconds", "max_rss_mb"]
    if folder is None or not Path(folder).is_dir():
        return pd.DataFrame(columns=columns)
    rows = []
    for path in sorted(Path(folder).rglob("*.tsv")):
        try:
            frame = pd.read_csv(path, sep="\t")
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
            continue
        if "s" not in frame.columns or frame.empty:
            continue
        rss = pd.to_numeric(frame.get("max_rss"), errors="coerce") if "max_rss" in frame else None
        rows.append({
            "job": path.relative_to(folder).with_suffix("").as_posix(),
            "seconds": float(pd.to_numeric(frame["s"], errors="coerce").mean()),
            "max_rss_mb": float(rss.mean()) if rss is not None else float("nan"),
        })
    return pd.DataFrame(rows, columns=columns)


def report_date() -> str:
    """Date and time of the run (UTC), or of ``SOURCE_DATE_EPOCH`` for reproducible builds."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    moment = (dt.datetime.fromtimestamp(int(epoch), tz=dt.UTC) if epoch
              else dt.datetime.now(tz=dt.UTC))
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Nested mapping -> ``[("a.b.c", "value"), ...]`` in the mapping's own order."""
    items: list[tuple[str, str]] = []
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            items += flatten(value, f"{name}.")
        else:
            items.append((name, ", ".join(map(str, value)) if isinstance(value, list)
                          else str(value)))
    return items


# --------------------------------------------------------------------------------------------
# Content
# --------------------------------------------------------------------------------------------
def read_tables(folder: Path) -> dict[str, pd.DataFrame]:
    """Read the report tables plus ``flow.csv`` and ``implementation.csv`` as strings."""
    tables = {}
    for name in [*TABLE_NAMES, "flow", "implementation"]:
        path = folder / f"{name}.csv"
        if not path.is_file():
            raise DataError(str(path), "table is missing", hint="run the `tables` step first")
        tables[name] = pd.read_csv(path, dtype=str, keep_default_na=False)
    return tables


def study_schedule(config: Mapping[str, Any]) -> dict[str, Any]:
    """Time points and estimand of the study, as the report's design text names them."""
    followups, primary = followup_labels(config), primary_followup(config)
    several = len(followups) > 1
    ancova = config["analysis"].get("baseline") == "covariate"
    return {
        "baseline": config["timepoints"]["baseline"], "followups": followups,
        "primary": primary, "several": several,
        "continuous": config["analysis"].get("time") == "continuous", "ancova": ancova,
        "estimand": (f"mean score at {primary} adjusted for the baseline score" if ancova
                     else "mean change from baseline to "
                     + (primary if several else "follow-up")),
        "estimand_each": ("mean score at each follow-up adjusted for the baseline score"
                          if ancova else "mean change from baseline to each follow-up"),
    }


def embed_figures(folder: Path, names: Sequence[str] = tuple(FIGURE_NAMES)) -> dict[str, str]:
    """Each figure's PNG as a ``data:`` URI."""
    uris = {}
    for name in names:
        path = folder / f"{name}.png"
        if not path.is_file():
            raise DataError(str(path), "figure is missing", hint="run the `figures` step first")
        uris[name] = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
    return uris


SENSITIVITY_METHODS = {
    "unadjusted_ancova": "ANCOVA, baseline only",
    "covariate_adjusted_ancova": "ANCOVA, baseline and covariates",
    "overlap_weighted_ancova": "Overlap-weighted ANCOVA (propensity score)",
    "iptw_weighted_ancova": "Stabilised, trimmed IPTW ANCOVA (propensity score)",
    "complete_case_ancova": None,  # same as covariate_adjusted_ancova; shown once
    "multiple_imputation_ancova": "Multiple imputation (chained equations), ANCOVA",
    "ancova_all_therapists": None,
    "ancova_same_sample": "ANCOVA, therapists treating both arms",
    "therapist_fixed_effects": "Therapist fixed effects, therapists treating both arms",
    "delta_adjusted_mi": None,
}


def sensitivity_section(estimates: Path, figures: Path, primary: list[dict[str, Any]],
                        truth_by_outcome: Mapping[str, str], config: Mapping[str, Any]
                        ) -> dict[str, Any]:
    """Primary effects beside their adjusted and imputed versions, E-values, tipping points.

    Reads ``sensitivity.*.json`` from the estimates folder and the figures each analysis drew
    under ``figures/sensitivity/<analysis>/``; empty when no sensitivity analysis ran.
    """
    docs = {path.name.split(".")[1]: json.loads(path.read_text(encoding="utf-8"))
            for path in sorted(estimates.glob("sensitivity.*.json"))}
    effects: list[dict[str, str]] = []
    for row in primary:
        effects.append({**row, "method": f"Mixed model ({row['population'].lower()})"})
    seen: set[tuple[str, str]] = set()
    for name in ("propensity", "multiple_imputation", "therapist_fixed_effects"):
        for r in docs.get(name, {}).get("estimates", []):
            label = SENSITIVITY_METHODS.get(r["method"], r["method"])
            if r["term"] != "arm_intervention" or label is None or (r["outcome"], label) in seen:
                continue
            seen.add((r["outcome"], label))
            effects.append({
                "outcome": outcome_label(config, r["outcome"]), "method": label,
                "n": r["n_patients"], "estimate": fmt_number(r["estimate"]),
                "ci": fmt_ci(r["ci_low"], r["ci_high"]), "p": fmt_p(r["p_value"]),
                "truth": truth_by_outcome.get(r["outcome"], ""),
            })
    order = {o.get("label", o["name"]): i for i, o in enumerate(config["outcomes"])}
    effects.sort(key=lambda e: order.get(e["outcome"], len(order)))  # stable: keeps methods
    evalues: dict[tuple[str, str], dict[str, str]] = {}
    for r in docs.get("evalue", {}).get("estimates", []):
        population = str(r.get("analysis", "")).removeprefix("evalue_")
        key = (r["outcome"], population)
        entry = evalues.setdefault(key, {
            "outcome": outcome_label(config, r["outcome"]),
            "population": POPULATION_NAMES.get(population, population), "n": r["n_patients"]})
        entry[r["term"]] = fmt_number(r["estimate"])
    tipping = [
        {"outcome": outcome_label(config, r["outcome"]), "delta": fmt_number(r["estimate"]),
         "notes": r.get("notes") or ""}
        for r in docs.get("tipping_point", {}).get("estimates", [])
        if r["term"] == "tipping_delta"
    ]
    images = []
    for path in sorted((figures / "sensitivity").glob("*/*.png")):
        caption = (
            f"Love plot, {outcome_label(config, path.stem.removeprefix('love_plot_'))}: "
            "standardised mean differences of "
            "the propensity-model covariates before and after weighting (dashed line: 0.1)."
            if path.stem.startswith("love_plot_") else
            f"Propensity overlap, "
            f"{outcome_label(config, path.stem.removeprefix('propensity_overlap_'))}: the "
            "share of each arm's patients per propensity-score bin (intervention above the "
            "line, control below); where one arm has none, positivity fails."
            if path.stem.startswith("propensity_overlap_") else
            f"Tipping point, {outcome_label(config, path.stem.removeprefix('tipping_point_'))}:"
            " the pooled effect as imputed intervention-arm follow-up scores are shifted in the"
            " unfavourable direction (delta, score points)."
        )
        images.append({"uri": "data:image/png;base64,"
                       + base64.b64encode(path.read_bytes()).decode(), "caption": caption,
                       "alt": caption.split(":")[0]})
    return {"ran": bool(docs), "effects": effects, "evalues": list(evalues.values()),
            "tipping": tipping, "images": images}


def _float(text: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return float("nan")


def describe_random_effects(value: Any) -> str:
    """Random-effects structure in words: ``components`` of a mapping, or the text as given."""
    if isinstance(value, Mapping):
        if value.get("covariance"):
            return f"none (MMRM; within-patient covariance {value['covariance']})"
        components = value.get("components") or value.get("levels")
        if components:
            return " + ".join(f"(1 | {c})" for c in components)
        if "levels" in value and not value["levels"]:
            return "none (least squares)"
        return "; ".join(f"{k}: {v}" for k, v in value.items())
    return "" if value is None else str(value)


def as_list(warnings: Any) -> list[str]:
    """Warnings as a list of messages, whether stored as a list or a ``"; "``-joined string."""
    if warnings is None or (isinstance(warnings, float) and warnings != warnings):
        return []
    if isinstance(warnings, str):
        return [w.strip() for w in warnings.split("; ") if w.strip()]
    return [str(w) for w in warnings if str(w).strip()]


def _warnings_text(text: str) -> str:
    return text.strip("[]\"' ") if text else ""


def design_text(config: Mapping[str, Any]) -> dict[str, str]:
    """Design wording: STROBE for observational studies, CONSORT for randomised ones."""
    intervention, control = arm_labels(config)
    if config["study"].get("design", "observational") == "randomised":
        return {
            "design": "Randomised controlled trial",
            "guideline": "CONSORT",
            "statement": (
                f"Patients were randomly allocated to {intervention} or {control}; differences "
                "between arms estimate the effect of allocation."),
        }
    return {
        "design": "Observational cohort study (not randomised)",
        "guideline": "STROBE",
        "statement": (
            f"Patients received {intervention} or {control} as part of routine care; nobody "
            "was randomised. Who received which care depended on the treating therapist and "
            "the patient, so the comparison is open to confounding. Estimates are adjusted "
            "associations between exposure and change in outcome, not proof of a causal "
            "effect."),
    }


def build_context(
    config: Mapping[str, Any], raw: Path, estimates: Path, tables: Path, figures: Path,
    benchmarks: Path | None,
) -> dict[str, Any]:
    """Everything the template shows, formatted for people."""
    intervention, control = arm_labels(config)
    loaded = load_estimates(estimates, config)
    frames = read_tables(tables)
    truth = load_truth(raw)
    simulated = truth is not None

    primary = []
    for row in frames["primary_estimates"].to_dict("records"):
        primary.append({
            "outcome": outcome_label(config, row["outcome"]),
            "population": POPULATION_NAMES.get(row["population"], row["population"]),
            "n": row["n_patients"], "clusters": row["n_clusters"],
            "estimate": fmt_number(_float(row["estimate"])),
            "ci": fmt_ci(_float(row["ci_low"]), _float(row["ci_high"])),
            "p": fmt_p(_float(row["p_value"])),
            "truth": fmt_number(_float(row["true_value"])) if row["true_value"] else "",
        })
    # Shown only with several follow-ups; with one it repeats the primary table.
    by_followup = []
    if len(followup_labels(config)) > 1:
        for row in frames["effects_by_followup"].to_dict("records"):
            by_followup.append({
                "outcome": outcome_label(config, row["outcome"]),
                "population": POPULATION_NAMES.get(row["population"], row["population"]),
                "followup": ("average over follow-ups" if row["followup"] == "overall"
                             else row["followup"]) + (" (primary)" if row["primary"] == "True"
                                                      else ""),
                "n": row["n_patients"], "estimate": fmt_number(_float(row["estimate"])),
                "ci": fmt_ci(_float(row["ci_low"]), _float(row["ci_high"])),
                "p": fmt_p(_float(row["p_value"])),
            })
    subgroups = []
    for row in frames["subgroup_estimates"].to_dict("records"):
        subgroups.append({
            "outcome": outcome_label(config, row["outcome"]), "subgroup": row["subgroup"],
            "level": {"0": f"no {row['subgroup']}", "1": row["subgroup"],
                      "heterogeneity": "difference between levels"}.get(
                row["level"], row["level"]),
            "n": row["n_patients"], "estimate": fmt_number(_float(row["estimate"])),
            "ci": fmt_ci(_float(row["ci_low"]), _float(row["ci_high"])),
            "p": fmt_p(_float(row["p_value"])),
            "p_het": fmt_p(_float(row["p_heterogeneity"])),
            "truth": fmt_number(_float(row["true_value"])) if row["true_value"] else "",
        })

    def tidy(frame: pd.DataFrame, digits: int = 2) -> list[dict[str, str]]:
        return [{
            "outcome": r["outcome"], "population": r["population"], "model": r["model"],
            "term": r["term"], "estimate": fmt_number(_float(r["estimate"]), digits),
            "ci": fmt_ci(_float(r["ci_low"]), _float(r["ci_high"]), digits),
            "p": fmt_p(_float(r["p_value"])), "n": r["n_patients"],
            "truth": fmt_number(_float(r.get("true_value", "")), digits)
            if r.get("true_value") else "",
            "warnings": _warnings_text(r["warnings"]),
        } for r in frame.to_dict("records")]

    variance = []
    for row in frames["variance_components"].to_dict("records"):
        variance.append({
            "outcome": outcome_label(config, row["outcome"]),
            "population": POPULATION_NAMES.get(row["population"], row["population"]),
            "component": row["component"], "quantity": row["quantity"],
            "value": fmt_number(_float(row["value"]), 3 if row["quantity"] == "icc" else 2),
        })
    models = []
    docs = [*loaded["primary"].values(), *loaded["subgroups"].values()]
    docs += [d for d in (loaded["sessions"], loaded["responders"]) if d is not None]
    for doc in docs:
        model = doc.get("model", {})
        notes = as_list(model.get("warnings"))
        seen = set(notes)
        for row in doc["estimates"]:
            # Rows repeat their model's warnings; count each message once per model.
            extra = [w for w in as_list(row.get("warnings")) if w not in seen]
            notes += extra
            seen.update(extra)
        models.append({
            "file": Path(doc["_file"]).name, "formula": model.get("formula", ""),
            "random_effects": describe_random_effects(model.get("random_effects", "")),
            "method": model.get("method", ""), "fit_path": model.get("fit_path", ""),
            "converged": model.get("converged", ""),
            "warnings": "; ".join(
                f"{w} (×{notes.count(w)})" if notes.count(w) > 1 else w
                for w in dict.fromkeys(notes)),
        })

    table1 = {}
    for population, part in frames["table1"].groupby("population", sort=False):
        table1[population] = part.to_dict("records")

    truth_by_outcome = {
        row["outcome"]: fmt_number(_float(row["true_value"]))
        for row in frames["primary_estimates"].to_dict("records") if row["true_value"]
    }
    sensitivity = sensitivity_section(Path(estimates), Path(figures), primary,
                                      truth_by_outcome, config)
    assumptions = flatten(config.get("simulation", {}).get("assumptions", {}) or {})
    reproduction = frames["reproduction"].to_dict("records")
    return {
        "title": config.get("report", {}).get("title", "Trial analysis report"),
        "study": config["study"], "design": design_text(config),
        "intervention": intervention, "control": control,
        "outcomes": [
            {"label": o.get("label", o["name"]), "units": o.get("units", "score"),
             "direction": "higher is better" if o.get("higher_is_better", True)
             else "lower is better", "mcid": o.get("mcid", ""),
             "primary": o["name"] == config.get("primary_outcome")}
            for o in config["outcomes"]
        ],
        "analysis": config["analysis"], "min_cell_count": config["report"]["min_cell_count"],
        "continuous_summary": config["report"]["continuous_summary"],
        "confidence": int(round(100 * confidence_level(config))),
        "simulated": simulated,
        "table1": table1, "implementation": frames["implementation"].to_dict("records"),
        "flow": frames["flow"].to_dict("records"),
        "primary": primary, "subgroups": subgroups, "sensitivity": sensitivity,
        "effects_by_followup": by_followup,
        "sessions": tidy(frames["sessions"]), "responders": tidy(frames["responders"], 3),
        "variance": variance, "models": models, "reproduction": reproduction,
        "reproduction_mismatches": sum(1 for r in reproduction if r["match"] == "no"),
        "assumptions": assumptions, "figures": embed_figures(figures, figure_names(config)),
        "has_sessions": has_table(config, "sessions"),
        "schedule": study_schedule(config),
        "figure_captions": FIGURE_CAPTIONS,
        "provenance": {
            "checksums": file_checksums(raw).to_dict("records"),
            "versions": package_versions().to_dict("records"),
            "commit": git_commit(), "seed": config.get("seed", ""), "date": report_date(),
            "config_yaml": yaml.safe_dump(dict(config), sort_keys=False, allow_unicode=True),
            "benchmarks": [
                {"job": r["job"], "seconds": fmt_number(r["seconds"], 1),
                 "max_rss_mb": fmt_number(r["max_rss_mb"], 0)}
                for r in benchmark_times(benchmarks).to_dict("records")
            ],
            "raw": str(raw), "version": __version__,
        },
    }


def render_report(context: Mapping[str, Any]) -> str:
    """Render the report template with ``context``."""
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("trial_analysis.reporting", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
    )
    return environment.get_template("report.html.j2").render(**context)


def run_report(
    config: dict[str, Any], raw: str | Path, estimates: str | Path, tables: str | Path,
    figures: str | Path, benchmarks: str | Path | None, out: str | Path,
) -> Path:
    """Assemble the self-contained HTML report (step ``report``).

    Parameters
    ----------
    config : dict
        Validated study configuration (shown in full, as run, under provenance).
    raw : path
        Raw extract folder: every file is checksummed; ``truth.json`` (simulated data) adds
        true values beside the estimates.
    estimates, tables, figures : path
        Folders written by the model steps, ``tables`` and ``figures``.
    benchmarks : path or None
        Folder of Snakemake benchmark files (rule run times); may be missing or empty.
    out : path
        HTML file to write.

    Returns
    -------
    Path
        The report written.
    """
    context = build_context(
        config, Path(raw), Path(estimates), Path(tables), Path(figures),
        Path(benchmarks) if benchmarks else None,
    )
    html = render_report(context)
    with atomic_path(out) as tmp:
        tmp.write_text(html, encoding="utf-8")
    return Path(out)
