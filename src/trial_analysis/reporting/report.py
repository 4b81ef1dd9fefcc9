"""The self-contained HTML report (step ``report``): what a reviewer reads.

One HTML file with inline CSS and the figures embedded as base64 PNG, so it opens offline and
makes no network request. It holds study and design (STROBE wording for observational studies,
CONSORT for randomised), the flow diagram, Table 1, implementation outcomes, estimates,
subgroups, trajectories, sessions, responders, variance components, model specifications and
warnings, the reproduction check, the simulation assumptions and the provenance of the run.

Privacy: the report reads only aggregate tables, estimate files and figures; of the analysis
table and the raw files it computes digests of the bytes, never reading a row, so no
identifier or patient row can reach it; Table 1 arrives with small cells already suppressed
by the ``tables`` step.

Determinism: everything except the provenance facts that describe the run itself (date, rule
run times, git state, Python, OS, command lines, package versions; see
:mod:`trial_analysis.reporting.provenance`) is a function of the inputs. Set
``SOURCE_DATE_EPOCH`` to fix the date.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd
import yaml

from trial_analysis import __version__
from trial_analysis.config import (
    all_timepoint_labels,
    arm_labels,
    arm_levels,
    confidence_level,
    followup_labels,
    has_table,
    multi_arm,
    primary_followup,
    time_values,
)
from trial_analysis.errors import DataError
from trial_analysis.io import atomic_path
from trial_analysis.labels import label, readable, sentence_label
from trial_analysis.reporting.analyst_text import analyst_text
from trial_analysis.reporting.by_population import by_population_section
from trial_analysis.reporting.diagnostics_appendix import diagnostics_section
from trial_analysis.reporting.figures import FIGURE_NAMES, figure_names
from trial_analysis.reporting.provenance import provenance_facts, source_notes
from trial_analysis.reporting.tables import (
    TABLE_NAMES,
    fmt_ci,
    fmt_number,
    fmt_p,
    fmt_sig,
    heterogeneity_tests,
    load_estimates,
    load_truth,
    outcome_label,
    slug,
    table1_groups,
)
from trial_analysis.reporting.target_trial import target_trial_table
from trial_analysis.reporting.wording import design_wording, effect_term_label, figure_captions
from trial_analysis.signature import design_signature

# Captions that do not depend on the design; trajectories and forest: wording.figure_captions.
FIGURE_CAPTIONS = {
    "flow": "Flow of referral episodes and patients through cleaning, eligibility, the two "
            "groups and each analysed population (overall and per group), computed from the "
            "record ledger; record-level cleaning of the other tables (rows dropped, values "
            "set missing) is noted beside the diagram.",
    "sessions": "Distribution of the number of treatment sessions by arm (percentage of the "
                "arm). The upper tail is pooled and bars with fewer patients than the minimum "
                "cell count are not drawn.",
    "implementation": "Implementation outcomes: reach, adoption and fidelity, with numerators "
                      "and denominators.",
}


# --------------------------------------------------------------------------------------------
# Provenance (run facts: trial_analysis.reporting.provenance)
# --------------------------------------------------------------------------------------------
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
    ancova = config["analysis"].get("baseline") == "covariate"
    continuous = config["analysis"].get("time") == "continuous"
    # With one effect over several follow-ups there is no per-follow-up table.
    constant = config["analysis"].get("effect") == "constant" and len(followups) > 1
    several = len(followups) > 1 and not constant
    if constant:
        estimand = ("mean score at every follow-up adjusted for the baseline score" if ancova
                    else "mean change from baseline at every follow-up")
        estimand += f", one effect assumed constant over {', '.join(followups)}"
    else:
        estimand = (f"mean score at {primary} adjusted for the baseline score" if ancova
                    else "mean change from baseline to " + (primary if several else "follow-up"))
        if continuous:
            value = time_values(config).get(primary)
            estimand += (f", read off the linear time trend at {primary}"
                         + (f" (time {value:g})" if value is not None else ""))
    return {
        "baseline": config["timepoints"]["baseline"], "followups": followups,
        "primary": primary, "several": several, "constant": constant,
        "continuous": continuous, "ancova": ancova, "estimand": estimand,
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
    "augmented_overlap": "Augmented overlap weighting (doubly robust, ATO)",
    "aipw": "Augmented inverse probability weighting (doubly robust, ATE)",
    # the bracketing's two fits are the covariate-adjusted rows; shown once
    "change_score": "Change score, covariates",
    "ancova": "ANCOVA, baseline and covariates",
    # change-score form of the analyses (sensitivity.model_forms)
    "unadjusted_change": "Change score, no covariates",
    "covariate_adjusted_change": "Change score, covariates",
    "overlap_weighted_change": "Overlap-weighted change score (propensity score)",
    "iptw_weighted_change": "Stabilised, trimmed IPTW change score (propensity score)",
    "complete_case_change": None,
    "multiple_imputation_change": "Multiple imputation (chained equations), change score",
    "change_all_therapists": None,
    "change_same_sample": "Change score, therapists treating both arms",
    "therapist_fixed_effects_change": "Therapist fixed effects, therapists treating both "
                                      "arms",
    "delta_adjusted_mi_change": None,
}

# Model form of a sensitivity row, so the table separates the adjustment from the form.
FORM_LABELS = {"ancova": "lagged outcome (ANCOVA)", "change": "change score",
               "doubly_robust": "doubly robust (baseline in both models)"}


def method_form(method: str) -> str:
    """The model form of a sensitivity method name (the word ``change``: change score)."""
    if method in ("augmented_overlap", "aipw"):
        return FORM_LABELS["doubly_robust"]
    if "change" in method.split("_"):
        return FORM_LABELS["change"]
    return FORM_LABELS["ancova"]


def bracketing_rows(document: Mapping[str, Any], config: Mapping[str, Any],
                    primary: Sequence[Mapping[str, Any]] = ()) -> list[dict[str, str]]:
    """The bracketing table of the ``doubly_robust`` step: change score, ANCOVA, interval.

    ``mixed`` is the primary mixed model's complete-case estimate when it was fitted on as many
    patients as the bracketing (the same population), else empty.
    """
    rows = []
    for r in document.get("tables", {}).get("bracketing", []):
        lower_is_ancova = r["lower"] == r["ancova"]
        label = outcome_label(config, r["outcome"])
        mixed = [p for p in primary if p.get("outcome") == label
                 and p.get("key") == "complete_case"
                 and str(p.get("n")) == str(r.get("n_patients"))]  # the tables are text
        rows.append({
            "outcome": label,
            "mixed": mixed[0]["estimate"] if mixed else "",
            "mixed_interval": fmt_ci(*sorted([mixed[0]["value"], r["ancova"]])) if mixed else "",
            "change": fmt_number(r["change_score"]), "ancova": fmt_number(r["ancova"]),
            "interval": fmt_ci(r["lower"], r["upper"]),
            "slope": fmt_number(r["baseline_coefficient"]),
            "difference": fmt_number(r["adjusted_baseline_difference"]),
            "upper": "change score" if lower_is_ancova else "ANCOVA",
            "holds": "yes" if r["stationarity_holds"] else "no",
        })
    return rows


def _tipping_entry(points: Mapping[str, Any], row: Mapping[str, Any]
                   ) -> Mapping[str, Any] | None:
    """The ``details.tipping_points`` entry of an estimate row: same outcome and method
    (each model form has its own), else the one keyed by the outcome (older files)."""
    for entry in points.values():
        if entry.get("outcome") == row["outcome"] and entry.get("method") == row["method"]:
            return entry
    return points.get(row["outcome"])


def tipping_sentence(found: Mapping[str, Any] | None, row: Mapping[str, Any],
                     config: Mapping[str, Any]) -> str:
    """The tipping point of one outcome as a full sentence.

    ``found`` is the outcome's entry of ``details.tipping_points`` (status, delta in points
    and in units of the MCID or control SD); without it the row's estimate stands alone.
    """
    intervention, _ = arm_labels(config)
    spec = next((o for o in config["outcomes"] if o["name"] == row["outcome"]), {})
    direction = "down" if spec.get("higher_is_better", True) else "up"
    confidence = int(round(100 * confidence_level(config)))
    found = dict(found or {})
    status = str(found.get("status") or ("reached" if row.get("estimate") is not None
                                           else "not reached"))
    delta = found.get("tipping_delta", row.get("estimate"))
    if status != "reached" or delta is None or _float(str(delta)) != _float(str(delta)):
        return (f"No tipping point: {status.rstrip('.')}. Imputed {intervention} follow-up "
                f"scores were shifted {direction} (missing not at random).")
    units = found.get("tipping_delta_units")
    in_units = ""
    if units is not None and found.get("unit"):
        name = found.get("unit_name", "units")
        in_units = (f" ({fmt_number(units)} {name}, where 1 {name} is "
                    f"{fmt_number(found['unit'], 3).rstrip('0').rstrip('.')} points)")
    return (f"The {confidence}% confidence interval of the effect first includes 0 when the "
            f"imputed {intervention} follow-up scores are shifted {direction}, in the "
            f"unfavourable direction, by {fmt_number(delta)} points{in_units}; patients "
            "without a follow-up score would have to fare that much worse than similar "
            "patients with one (missing not at random) for the effect to lose significance.")


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
    words = design_wording(config)
    for row in primary:
        effects.append({**row, "method": f"{words['model_short'].capitalize()} "
                                         f"({row['population'].lower()})",
                        "form": words["form"]})
    seen: set[tuple[str, str, str]] = set()
    for name in ("propensity", "doubly_robust", "multiple_imputation",
                 "therapist_fixed_effects"):
        for r in docs.get(name, {}).get("estimates", []):
            method = SENSITIVITY_METHODS.get(r["method"], label(config, r["method"]))
            form = method_form(r["method"])
            if r["term"] != "arm_intervention" or method is None \
                    or (r["outcome"], method, form) in seen:
                continue
            seen.add((r["outcome"], method, form))
            effects.append({
                "outcome": outcome_label(config, r["outcome"]), "method": method, "form": form,
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
            "population": label(config, population), "n": r["n_patients"]})
        entry[r["term"]] = fmt_number(r["estimate"])
    points = (docs.get("tipping_point", {}).get("details") or {}).get("tipping_points") or {}
    tipping = [
        {"outcome": outcome_label(config, r["outcome"]),
         "sentence": tipping_sentence(_tipping_entry(points, r), r, config),
         "form": method_form(r["method"])}
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
                       "alt": caption.split(":")[0], "source": path.as_posix()})
    return {"ran": bool(docs), "effects": effects, "evalues": list(evalues.values()),
            "tipping": tipping, "images": images,
            "imputation": imputation_text(docs.get("multiple_imputation", {})),
            "bracketing": bracketing_rows(docs.get("doubly_robust", {}), config, primary)}


def imputation_text(doc: Mapping[str, Any]) -> str:
    """How the imputations were made, how many, and what their MAR assumption conditions on."""
    details = doc.get("details") or {}
    if not details:
        return ""
    parts = [f"Multiple imputation: {details.get('imputation_model', '')}."]
    choice = details.get("m_choice")
    if choice:
        largest = max(choice["pilot_fmi"].values()) if choice["pilot_fmi"] else 0.0
        parts.append(f"{choice['m']} imputations, chosen as at least 100 times the largest "
                     f"fraction of missing information ({largest:.2f}) of a "
                     f"{choice['pilot_m']}-imputation pilot"
                     + (f", capped at {choice['max_m']}" if choice["capped"] else "") + ".")
    else:
        settings = details.get("settings") or {}
        parts.append(f"{settings.get('m', '?')} imputations (fixed in the configuration).")
    if details.get("missingness_predictors"):
        parts.append(details["missingness_predictors"])
    return " ".join(parts)


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


def _warning_list(notes: list[str]) -> str:
    return "; ".join(f"{w} (×{notes.count(w)})" if notes.count(w) > 1 else w
                     for w in dict.fromkeys(notes))


def _doc_title(doc: Mapping[str, Any], config: Mapping[str, Any]) -> str:
    """What a model file fits, in words: outcome and population, or subgroup, or its name."""
    stem = Path(doc["_file"]).stem
    outcome, _, rest = stem.partition(".")
    if not rest:
        return sentence_label(config, outcome)
    if rest.startswith("subgroup_"):
        return (f"{label(config, outcome)}, subgroup "
                f"{label(config, rest.removeprefix('subgroup_'))}")
    return f"{label(config, outcome)}, {label(config, rest)}"


def _level_of_term(term: str) -> str | None:
    """The level in a within-level term (``arm:time [depression=1]`` -> ``1``)."""
    match = re.search(r"=\s*([^\]\s]+)\s*\]", term)
    return match.group(1) if match else None


def code_segments(text: str) -> list[tuple[str, bool]]:
    """Split prose into ``(text, is_code)`` parts: dotted module paths (``a.b.c``) are code."""
    parts: list[tuple[str, bool]] = []
    position = 0
    for match in re.finditer(r"\b[a-z_]+(?:\.[a-z_]+)+\b", text):
        parts += [(text[position:match.start()], False), (match.group(0), True)]
        position = match.end()
    return [*parts, (text[position:], False)]


def formula_notes(rows: list[dict[str, str]]) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Each distinct formula and random-effects structure once, rows referring to it (F1, ...).

    Two dozen models share a handful of formulas; printed in every row they made Table 8 run
    to pages.
    """
    notes: list[dict[str, str]] = []
    keys: list[tuple[str, str]] = []
    marked = []
    for row in rows:
        key = (row["formula"], row["random_effects"])
        if not any(key):
            marked.append({**row, "formula_mark": ""})
            continue
        if key not in keys:
            keys.append(key)
            notes.append({"mark": f"F{len(keys)}", "formula": key[0], "random_effects": key[1]})
        marked.append({**row, "formula_mark": f"F{keys.index(key) + 1}"})
    return marked, notes


def model_specifications(docs: Sequence[Mapping[str, Any]], config: Mapping[str, Any]
                         ) -> tuple[list[dict[str, str]], list[str]]:
    """Table 8: one row per fitted model, each with only the warnings that model raised.

    A subgroup file holds the interaction model (its ``model`` block) and one stratified fit
    per level (``stratified_models``); the rows of model ``stratified`` belong to the fit of
    their level, every other row to the interaction model. The estimation methods are listed
    once (the second value returned) and rows refer to them by letter.
    """
    rows: list[dict[str, str]] = []
    methods: list[str] = []

    def method_mark(text: Any) -> str:
        if not text:
            return ""
        if str(text) not in methods:
            methods.append(str(text))
        return "abcdefghijklmnopqrstuvwxyz"[methods.index(str(text)) % 26]

    def add(title: str, file: str, model: Mapping[str, Any], notes: list[str]) -> None:
        fit_path = model.get("fit_path", "")
        rows.append({
            "model": title, "file": file, "formula": model.get("formula", ""),
            "random_effects": describe_random_effects(model.get("random_effects", "")),
            "method": method_mark(model.get("method", "")),
            "fit_path": label(config, fit_path) if fit_path else "",
            "converged": {"True": "yes", "False": "no"}.get(
                str(model.get("converged", "")), str(model.get("converged", ""))),
            # The model step names variance components by their keys ("therapist:time").
            "warnings": re.sub(r"\bthe ([\w:]+) variance",
                               lambda m: f"the {label(config, m.group(1))} variance",
                               _warning_list(notes)),
        })

    for doc in docs:
        model = doc.get("model", {})
        strata = doc.get("stratified_models") or {}
        own = as_list(model.get("warnings"))
        if doc.get("not_reported"):
            own.append(str(doc["not_reported"]))
        by_level: dict[str, list[str]] = {str(k): as_list(v.get("warnings"))
                                          for k, v in strata.items()}
        for row in doc["estimates"]:
            # Rows repeat their model's warnings; count each message once per model.
            level = _level_of_term(str(row["term"]))
            if str(row.get("model", "")) == "stratified" and level in by_level:
                target = by_level[level]
            else:
                target = own
            target += [w for w in as_list(row.get("warnings")) if w not in target]
        file = Path(doc["_file"]).name
        title = _doc_title(doc, config)
        subgroup = str(doc.get("subgroup") or "")
        add(f"{title}: interaction model" if strata else title, file, model, own)
        for level, block in strata.items():
            name = {"0": f"no {label(config, subgroup)}", "1": label(config, subgroup)}.get(
                str(level), f"{label(config, subgroup)} = {level}")
            add(f"{title}: stratified fit, {name}", file, block, by_level[str(level)])
    return rows, methods


def design_text(config: Mapping[str, Any]) -> dict[str, str]:
    """Design wording: STROBE for observational studies, CONSORT for randomised ones."""
    intervention, control = arm_labels(config)
    if config["study"].get("design", "observational") == "randomised":
        several = multi_arm(config)
        return {
            "key": "randomised", "randomised": True,
            "design": "Randomised controlled trial"
                      + (f" with {len(arm_levels(config))} arms" if several else ""),
            "guideline": "CONSORT",
            "sensitivity_heading": "Sensitivity analyses",
            "defaults": ("no eligibility rules of the default study (minimum age, CLBP "
                         "diagnosis code, first episode only: off), no cluster x time random "
                         "intercepts, "
                         + ("no sensitivity analyses (with several arms, each compares two)"
                            if several else "the missing-data sensitivity analyses (multiple "
                            "imputation, tipping point)")
                         + ", no target-trial eligibility rule"),
            "statement": (
                f"Patients were randomly allocated to {intervention} or {control}; differences "
                "between arms estimate the effect of allocation."),
        }
    return {
        "key": "observational", "randomised": False,
        "design": "Observational cohort study (not randomised)",
        "guideline": "STROBE",
        "sensitivity_heading": "Sensitivity analyses of the observational comparison",
        "defaults": ("the eligibility rules of the schema (minimum age 18, diagnosis code, first "
                     "episode), therapist x time random intercepts, every sensitivity "
                     "analysis (confounding and missing data), the target trial's "
                     "trained-therapist rule available"),
        "statement": (
            f"Patients received {intervention} or {control} as part of routine care; nobody "
            "was randomised. Who received which care depended on the treating therapist and "
            "the patient, so the comparison is open to confounding. Estimates are adjusted "
            "associations between exposure and "
            + ("the follow-up outcome" if design_wording(config)["ancova"]
               else "change in outcome") + ", not proof of a causal effect."),
    }


def level_label(config: Mapping[str, Any], subgroup: str, level: str) -> str:
    """A subgroup level in words: ``0``/``1`` of a flag as "no depression"/"depression"."""
    name = label(config, subgroup)
    return {"0": f"no {name}", "1": name, "heterogeneity": "difference between levels"}.get(
        str(level), f"{name}: {label(config, level)}")


def _time_ordered(components: Iterable[str], config: Mapping[str, Any]) -> list[str]:
    """Components in their file order, except that per-visit ones (an MMRM's
    ``variance [w4]``) follow the config's time points rather than the file's sorted keys."""
    times = {label: i for i, label in enumerate(all_timepoint_labels(config))}
    names = list(components)

    def visit(name: str) -> int | None:
        match = re.fullmatch(r"variance \[(.+)\]", name)
        return times.get(match.group(1)) if match else None

    slots = [i for i, name in enumerate(names) if visit(name) is not None]
    for slot, name in zip(slots, sorted((names[i] for i in slots), key=visit), strict=True):
        names[slot] = name
    return names


def variance_tables(frame: pd.DataFrame, config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Table 7 wide, one table per outcome: a row per component, variance and ICC per population.

    Values to 3 significant digits (a variance of 160 and one of 0.19 are equally precise).
    Without random effects (least squares) there is only the residual variance, whose "ICC"
    would be 1: no ICC column then.
    """
    quantities = ("variance", "icc") if design_wording(config)["mixed"] else ("variance",)
    tables = []
    for outcome, part in frame.groupby("outcome", sort=False):
        populations = list(dict.fromkeys(part["population"]))
        rows = []
        for component in _time_ordered(dict.fromkeys(part["component"]), config):
            cells = []
            for population in populations:
                for quantity in quantities:
                    match = part[(part["component"] == component)
                                 & (part["population"] == population)
                                 & (part["quantity"] == quantity)]
                    cells.append(fmt_sig(_float(match["value"].iloc[0])) if len(match)
                                 else "–")
            rows.append({"component": sentence_label(config, component), "cells": cells})
        tables.append({"outcome": outcome_label(config, outcome), "quantities": quantities,
                       "populations": [label(config, p) for p in populations], "rows": rows})
    return tables


def _count_label(config: Mapping[str, Any], key: str) -> str:
    """A published count's key in words (``complete_cases_etmi`` -> "complete cases, ETMI")."""
    by_slug = {slug(arm): arm for arm in arm_labels(config)}
    for arm_slug, arm in by_slug.items():
        if key == f"{arm_slug}_patients":
            return f"{arm} patients"
        if key.endswith(f"_{arm_slug}"):
            return f"{label(config, key.removesuffix(f'_{arm_slug}'))}, {arm}"
    return label(config, key)


def direction_label(config: Mapping[str, Any], value: str) -> str:
    """A direction of effect in words, naming the arms."""
    intervention, control = arm_labels(config)
    return {"favours_intervention": f"favours {intervention}",
            "favours_control": f"favours {control}", "no_difference": "no difference",
            "fewer_in_intervention": f"fewer with {intervention}",
            "more_in_intervention": f"more with {intervention}"}.get(value, label(config, value))


def reproduction_rows(frame: pd.DataFrame, config: Mapping[str, Any]) -> dict[str, Any]:
    """Table 9 for people: labelled rows, what each match shows (lettered notes) and a summary.

    The summary says plainly what was compared, how many of the matches hold by construction
    (counts the simulated cohort was built to have) and what could not be compared.
    """
    evidence: list[str] = []
    rows = []
    for r in frame.to_dict("records"):
        text = r.get("evidence", "")
        if text and text not in evidence:
            evidence.append(text)
        kind = r["kind"]
        if kind == "count":
            item = _count_label(config, r["item"])
        elif kind == "direction":
            item = ("treatment sessions" if r["item"] == "sessions"
                    else outcome_label(config, r["item"]))
        elif kind == "estimate":
            outcome, _, population = r["item"].partition(" (")
            item = f"{outcome_label(config, outcome)} ({label(config, population.rstrip(')'))})"
        else:
            item = label(config, r["item"])
        direction = kind == "direction"
        rows.append({
            **r, "kind": label(config, kind), "item": sentence_label(config, item),
            "published": direction_label(config, r["published"]) if direction
            else r["published"],
            "reproduced": direction_label(config, r["reproduced"]) if direction and
            r["reproduced"] else r["reproduced"],
            "evidence": "abcdefghijklmnopqrstuvwxyz"[evidence.index(text) % 26] if text else "",
        })
    kinds = list(frame["kind"])
    by_construction = int(sum(1 for r in frame.to_dict("records")
                              if r["kind"] == "count" and r.get("evidence", "").startswith(
                                  "by construction")))
    compared = []
    if kinds.count("count"):
        compared.append(f"{kinds.count('count')} published counts"
                        + (f" ({by_construction} of them built into the simulated cohort, so "
                           "they match by construction)" if by_construction else ""))
    if kinds.count("direction"):
        compared.append(f"{kinds.count('direction')} directions of effect (not their size)")
    if kinds.count("estimate"):
        compared.append(f"{kinds.count('estimate')} published effect estimates")
    not_compared = [r.get("evidence", "") for r in frame.to_dict("records")
                    if r["kind"] == "not_compared"]
    return {"rows": rows, "evidence": [t[:1].upper() + t[1:] for t in evidence],
            "compared": compared,
            "not_compared": not_compared}


def flow_rows(frame: pd.DataFrame, config: Mapping[str, Any]) -> list[dict[str, str]]:
    """The counts behind the flow diagram, each step and reason in words."""
    randomised = config["study"].get("design") == "randomised"
    steps = {"extract": "Extract", "clean": "Cleaning (patients)",
             "records": "Cleaning (records, not patients)", "eligibility": "Eligibility",
             "allocation": "Allocation" if randomised else "Exposure groups",
             "analysis": "Analysed"}
    rows = []
    for r in frame.to_dict("records"):
        description = readable(config, r["description"])
        rows.append({**r, "step": steps.get(r["step"], sentence_label(config, r["step"])),
                     "description": description[:1].upper() + description[1:],
                     "reason": readable(config, r["reason"])})
    return rows


def primary_rows(frame: pd.DataFrame, config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows of the primary results table (Table 3), formatted, from ``primary_estimates.csv``
    read as strings (``value`` and ``key``: the estimate as a number and the population key,
    for the bracketing table)."""
    return [{
        "outcome": outcome_label(config, row["outcome"]),
        "population": label(config, row["population"]),
        "n": row["n_patients"], "clusters": row["n_clusters"],
        "estimate": fmt_number(_float(row["estimate"])),
        "ci": fmt_ci(_float(row["ci_low"]), _float(row["ci_high"])),
        "p": fmt_p(_float(row["p_value"])),
        "truth": fmt_number(_float(row["true_value"])) if row["true_value"] else "",
        "value": _float(row["estimate"]), "key": row["population"],
        **_adjusted_cells(row),
    } for row in frame.to_dict("records")]


def _adjusted_cells(row: Mapping[str, Any]) -> dict[str, str]:
    """Several arms: the contrast's name, adjusted p and simultaneous CI (empty otherwise)."""
    if "contrast" not in row:
        return {}
    low, high = _float(row["ci_low_adjusted"]), _float(row["ci_high_adjusted"])
    return {"contrast": str(row["contrast"]), "p_adjusted": fmt_p(_float(row["p_adjusted"])),
            "ci_adjusted": fmt_ci(low, high) if np.isfinite(low) else "–"}


MULTIPLICITY_WORDS = {
    "none": "no adjustment for multiple comparisons",
    "holm": "Holm's step-down adjustment of the p values (intervals unadjusted)",
}


def arms_context(config: Mapping[str, Any]) -> dict[str, Any]:
    """What the report says about the arms: Table 1's columns and, with three or more arms,
    the contrasts, the multiplicity method in words and the analyses left out."""
    groups = table1_groups(config)
    if not multi_arm(config):
        intervention, control = arm_labels(config)
        return {"several": False, "table1": groups, "minus": f"{intervention} minus {control}"}
    levels = arm_levels(config)
    analysis = config.get("analysis", {})
    pairs = analysis.get("contrasts", "reference") == "all_pairs"
    k = len(levels)
    n = k * (k - 1) // 2 if pairs else k - 1
    method = str(analysis.get("multiplicity", "single_step"))
    single = method in ("single_step", "dunnett", "tukey")
    if single:
        name = "Tukey's" if pairs else "Dunnett's"
        words = (f"{name} single-step adjustment (multivariate t with the contrasts' "
                 "correlation from the model, as R's multcomp)")
    else:
        words = MULTIPLICITY_WORDS[method]
    return {
        "several": True, "table1": groups, "k": k, "reference": levels[0],
        "minus": f"each arm minus {levels[0]}",
        # which adjusted columns the tables show: both (single step), p (Holm), none
        "interval": "simultaneous" if single else "",
        "show_p": method != "none",
        "n_comparisons": n, "multiplicity": words,
        "family": "every pair of arms" if pairs else f"each arm against {levels[0]}",
        "names": [f"{levels[a]} vs {levels[b]}" for a, b in (
            [(j, i) for i in range(k) for j in range(i + 1, k)] if pairs
            else [(j, 0) for j in range(1, k)])],
        "omitted": ("sensitivity analyses, responder analysis, subgroup models and the "
                    "sessions model: each compares two arms, so with "
                    f"{k} arms they are not run (asking for one is a configuration error)"),
    }


def ledger_sources(ledger: Path | None) -> list[dict[str, str]]:
    """The tables read by a query or selected from an ADaM dataset, as the ledger records them.

    From the cleaning ledger's Parquet metadata (``attrs["sources"]``, written by ``clean``):
    table, engine, database (a file, or the *name* of an environment variable), the query or
    selection and the rows it gave; never connection settings, which the ledger never holds.
    Empty without a ledger or when every table is a plain file.
    """
    if ledger is None or not Path(ledger).is_file():
        return []
    sources = pd.read_parquet(ledger, columns=["table"]).attrs.get("sources") or []
    return [{
        "table": str(s["table"]), "engine": str(s["engine"]), "database": str(s["database"]),
        "query": " ".join(str(s["query"]).split()), "rows": str(s["rows"]),
        "of": str(s["rows_in_source"]) if "rows_in_source" in s else "",
    } for s in sources]


def build_context(
    config: Mapping[str, Any], raw: Path, estimates: Path, tables: Path, figures: Path,
    benchmarks: Path | None, analysis: Path | None = None, ledger: Path | None = None,
    stress: Path | None = None, stress_study: Path | None = None,
) -> dict[str, Any]:
    """Everything the template shows, formatted for people."""
    intervention, control = arm_labels(config)
    loaded = load_estimates(estimates, config)
    frames = read_tables(tables)
    truth = load_truth(raw)
    simulated = truth is not None

    primary = primary_rows(frames["primary_estimates"], config)
    # Shown only with several follow-ups; with one it repeats the primary table.
    by_followup = []
    if len(followup_labels(config)) > 1:
        for row in frames["effects_by_followup"].to_dict("records"):
            by_followup.append({
                "outcome": outcome_label(config, row["outcome"]),
                "population": label(config, row["population"]),
                "followup": ("average over follow-ups" if row["followup"] == "overall"
                             else row["followup"]) + (" (primary)" if row["primary"] == "True"
                                                      else ""),
                "n": row["n_patients"], "estimate": fmt_number(_float(row["estimate"])),
                "ci": fmt_ci(_float(row["ci_low"]), _float(row["ci_high"])),
                "p": fmt_p(_float(row["p_value"])), **_adjusted_cells(row),
            })
    subgroups = []
    for row in frames["subgroup_estimates"].to_dict("records"):
        subgroups.append({
            "outcome": outcome_label(config, row["outcome"]),
            "subgroup": sentence_label(config, row["subgroup"]),
            "level": (_warnings_text(row["warnings"]) if row["level"] == "not reported"
                      else level_label(config, row["subgroup"], row["level"])),
            "n": row["n_patients"], "estimate": fmt_number(_float(row["estimate"])),
            "ci": fmt_ci(_float(row["ci_low"]), _float(row["ci_high"])),
            "p": fmt_p(_float(row["p_value"])),
            "p_het": fmt_p(_float(row["p_heterogeneity"])),
            "p_het_holm": fmt_p(_float(row["p_heterogeneity_holm"])),
            "truth": fmt_number(_float(row["true_value"])) if row["true_value"] else "",
        })

    def tidy(frame: pd.DataFrame, digits: int = 2) -> list[dict[str, str]]:
        return [{
            "outcome": sentence_label(config, r["outcome"]),
            "population": label(config, r["population"]),
            "model": sentence_label(config, r["model"]),
            "term": effect_term_label(config, r["term"]),
            "estimate": fmt_number(_float(r["estimate"]), digits),
            "ci": fmt_ci(_float(r["ci_low"]), _float(r["ci_high"]), digits),
            "p": fmt_p(_float(r["p_value"])), "n": r["n_patients"],
            "truth": fmt_number(_float(r.get("true_value", "")), digits)
            if r.get("true_value") else "",
            "warnings": _warnings_text(r["warnings"]),
        } for r in frame.to_dict("records")]

    variance = variance_tables(frames["variance_components"], config)
    docs = [*loaded["primary"].values(), *loaded["subgroups"].values()]
    docs += [d for d in (loaded["sessions"], loaded["responders"]) if d is not None]
    models, methods = model_specifications(docs, config)
    methods = [code_segments(text) for text in methods]
    models, formulas = formula_notes(models)

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
    reproduction = reproduction_rows(frames["reproduction"], config)
    return {
        "title": config.get("report", {}).get("title", "Trial analysis report"),
        "study": config["study"], "design": design_text(config),
        "target_trial": target_trial_table(config, frames["flow"]).to_dict("records"),
        "by_population": by_population_section(Path(estimates), config, Path(tables)),
        "intervention": intervention, "control": control, "arms": arms_context(config),
        "outcomes": [
            {"label": o.get("label", o["name"]), "units": o.get("units", "score"),
             "direction": "higher is better" if o.get("higher_is_better", True)
             else "lower is better", "mcid": o.get("mcid", ""),
             "primary": o["name"] == config.get("primary_outcome")}
            for o in config["outcomes"]
        ],
        "named": {key: [label(config, name) for name in config["analysis"].get(key) or []]
                  for key in ("covariates", "populations", "subgroups")},
        "analysis": config["analysis"], "min_cell_count": config["report"]["min_cell_count"],
        "continuous_summary": config["report"]["continuous_summary"],
        "confidence": int(round(100 * confidence_level(config))),
        "simulated": simulated,
        "table1": table1,
        "implementation": [{**r, "measure": sentence_label(config, r["measure"])}
                           for r in frames["implementation"].to_dict("records")],
        "flow": flow_rows(frames["flow"], config),
        "primary": primary, "subgroups": subgroups, "sensitivity": sensitivity,
        "multiplicity": multiplicity_text(frames["subgroup_estimates"], config),
        "stress": stress_section(stress, config, stress_study),
        "effects_by_followup": by_followup,
        "sessions": tidy(frames["sessions"]), "responders": tidy(frames["responders"], 3),
        "variance": variance, "models": models, "methods": methods, "formulas": formulas,
        "reproduction": reproduction,
        "reproduction_mismatches": sum(1 for r in reproduction["rows"] if r["match"] == "no"),
        "assumptions": assumptions, "figures": embed_figures(figures, figure_names(config)),
        "has_sessions": has_table(config, "sessions"),
        "schedule": study_schedule(config),
        "figure_captions": figure_captions(config, FIGURE_CAPTIONS),
        "wording": design_wording(config),
        "sources": source_notes(tables, figures, estimates, analysis),
        "analyst": analyst_text(config),
        "diagnostics": diagnostics_section(Path(tables), Path(figures), config),
        "provenance": {
            **provenance_facts(config, raw, analysis),
            "sources": ledger_sources(ledger),
            "seed": config.get("seed", ""), "date": report_date(),
            "config_yaml": yaml.safe_dump(dict(config), sort_keys=False, allow_unicode=True),
            "benchmarks": [
                {"job": r["job"], "seconds": fmt_number(r["seconds"], 1),
                 "max_rss_mb": fmt_number(r["max_rss_mb"], 0)}
                for r in benchmark_times(benchmarks).to_dict("records")
            ],
            "raw": str(raw), "version": __version__,
        },
    }


STRESS_MEASURES = ("bias", "bias_mcse", "bias_realised", "empirical_se", "mean_model_se",
                   "coverage", "coverage_mcse", "power", "power_mcse")


def stress_section(summary: Path | None, config: Mapping[str, Any] | None = None,
                   study: Path | None = None) -> dict[str, Any] | None:
    """The design stress study's table and figure, when its summary was given and exists.

    ``summary`` is ``summary.json`` of ``snakemake stress_study``, or the committed copy
    ``docs/stress-study.json``; its figure is ``stress_study.png`` beside it (or the summary's
    name with ``.png``). Aggregates over simulated replicates only. With ``config`` and the
    study file, the summary's design signature
    (:func:`~trial_analysis.signature.design_signature`) must equal this run's;
    otherwise only a note that it belongs to another design is returned (``mismatch``).
    ``committed`` says the summary is not under this run's reports folder.
    """
    if summary is None or not Path(summary).is_file():
        return None
    document = json.loads(Path(summary).read_text(encoding="utf-8"))
    reports = Path(str((config or {}).get("paths", {}).get("reports", "reports")))
    committed = reports.resolve() not in Path(summary).resolve().parents
    source = Path(summary).as_posix() if committed else ""
    checkable = config is not None and study is not None and Path(study).is_file()
    if checkable and document.get("design_signature") != design_signature(config, study):
        return {"mismatch": True, "committed": committed, "source": source}
    labels = document.get("estimators", {})
    rows = []
    for r in document["summary"]:
        rows.append({
            "scenario": str(r["scenario"]).replace("_", " "),
            "estimator": labels.get(r["estimator"], r["estimator"]),
            "n": r["n_ok"], "true": fmt_number(_float(r["true_value"])),
            "bias": f"{_float(r['bias']):.2f} ({_float(r['bias_mcse']):.2f})",
            "bias_realised": f"{_float(r['bias_realised']):.2f}",
            "empirical_se": f"{_float(r['empirical_se']):.2f}",
            "model_se": f"{_float(r['mean_model_se']):.2f}",
            "coverage": f"{_float(r['coverage']):.3f} ({_float(r['coverage_mcse']):.3f})",
            "power": f"{_float(r['power']):.3f} ({_float(r['power_mcse']):.3f})",
            "holds": "yes" if r["holds"] else "no",
        })
    holding = {m: [labels.get(e, e) for e, ok in by.items() if ok]
               for m, by in document.get("holds", {}).items()}
    figure = Path(summary).with_name("stress_study.png")
    if not figure.is_file():
        figure = Path(summary).with_suffix(".png")
    return {
        "mismatch": False, "committed": committed, "source": source,
        "recommendation": stress_recommendation(holding, labels),
        "rows": rows, "target": document.get("target", ""),
        "replicates": sorted({int(s["n_replicates"]) for s in document["study"]["scenarios"]}),
        "holding": [{"mechanism": m.replace("_", " "), "estimators": ", ".join(e) or "none"}
                    for m, e in holding.items()],
        "figure": ("data:image/png;base64," + base64.b64encode(figure.read_bytes()).decode()
                   if figure.is_file() else ""),
    }


def stress_recommendation(holding: Mapping[str, list[str]],
                          labels: Mapping[str, str]) -> dict[str, Any]:
    """What the report recommends reading, from which estimator holds under which mechanism.

    An estimator is recommended only under the mechanisms where the stress study shows it
    meets the target; mechanisms where none does are named. The primary comparison is
    summarised by the bracket of the change-score and ANCOVA estimates (Ding & Li 2019) when
    those two hold under different mechanisms: the data cannot tell the mechanisms apart.
    """
    trusted = [{"mechanism": m.replace("_", " "), "estimators": ", ".join(e)}
               for m, e in holding.items() if e]
    unprotected = [m.replace("_", " ") for m, e in holding.items() if not e]
    mixed, ancova = labels.get("mixed_model", "mixed_model"), labels.get("ancova", "ancova")
    where = {name: {m for m, e in holding.items() if name in e} for name in (mixed, ancova)}
    bracket = bool(where[mixed] and where[ancova] and where[mixed] != where[ancova])
    return {"trusted": trusted, "unprotected": unprotected, "bracket": bracket}


def multiplicity_text(subgroup_table: pd.DataFrame, config: Mapping[str, Any]) -> dict[str, Any]:
    """The multiplicity plan in words: one primary outcome, secondaries and subgroups exploratory.

    The number of subgroup tests is counted from the heterogeneity tests actually reported
    (outcomes x subgroups with a p-value), so it never disagrees with Table 4.
    """
    primary_name = config.get("primary_outcome")
    secondary = [outcome_label(config, o["name"]) for o in config["outcomes"]
                 if o["name"] != primary_name]
    n_outcomes = subgroup_table["outcome"].nunique() if len(subgroup_table) else 0
    n_subgroups = subgroup_table["subgroup"].nunique() if len(subgroup_table) else 0
    arms = arms_context(config)
    return {
        # several arms: the confirmatory family is the primary outcome's contrasts
        "arms": (f"its {arms['n_comparisons']} contrasts ({arms['family']}), with "
                 f"{arms['multiplicity']}") if arms["several"] else "",
        "primary": outcome_label(config, primary_name) if primary_name else "",
        "secondary": secondary,
        "n_tests": len(heterogeneity_tests(subgroup_table)),
        "n_outcomes": int(n_outcomes), "n_subgroups": int(n_subgroups),
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
    analysis: str | Path | None = None,
    ledger: str | Path | None = None,
    stress_summary: str | Path | None = None,
    stress_study: str | Path | None = None,
) -> Path:
    """Assemble the self-contained HTML report (step ``report``).

    Parameters
    ----------
    config : dict
        Validated study configuration (shown in full, as run, under provenance).
    raw : path
        Raw extract folder: the files the run read are checksummed; ``truth.json``
        (simulated data) adds true values beside the estimates.
    estimates, tables, figures : path
        Folders written by the model steps, ``tables`` and ``figures``.
    benchmarks : path or None
        Folder of Snakemake benchmark files (rule run times); may be missing or empty.
    out : path
        HTML file to write.
    analysis : path or None
        The analysis table, checksummed for provenance (the report never reads its rows).
    ledger : path, optional
        The cleaning ledger: the queries (and ADaM selections) it records, with their row
        counts, are listed under provenance.
    stress_summary : path or None
        ``summary.json`` of the design stress study, or the committed
        ``docs/stress-study.json``; its table and figure are shown when given.
    stress_study : path or None
        The stress study file (``config/stress_study.yaml``): with it the summary is shown
        only when its design signature equals this run's.

    Returns
    -------
    Path
        The report written.
    """
    context = build_context(
        config, Path(raw), Path(estimates), Path(tables), Path(figures),
        Path(benchmarks) if benchmarks else None, Path(analysis) if analysis else None,
        Path(ledger) if ledger else None,
        Path(stress_summary) if stress_summary else None,
        Path(stress_study) if stress_study else None,
    )
    html = render_report(context)
    with atomic_path(out) as tmp:
        tmp.write_text(html, encoding="utf-8")
    return Path(out)
