"""What the configured design and model estimate, in the words the report and figures use.

The default study fits a linear mixed model of the change from baseline, clustered by
therapist; a trial configured with the baseline as a covariate (ANCOVA), without random effects
or without clustering estimates something else, and its report must say so. Every caption, axis
label and heading that names the estimand or the model takes its words from
:func:`design_wording`, so one function decides, from the config alone:

- the estimated quantity: "difference in mean change" (change-score model) or "adjusted
  difference in follow-up score" (``analysis.baseline: covariate``);
- the model: "linear mixed model" with random effects, an MMRM with ``analysis.covariance``
  (a marginal model: no random effects, no ICC), "linear regression" (ordinary least squares)
  otherwise;
- whether there is clustering (a random-effect level other than ``patient``): without it there
  is no cluster column;
- whether the model has an arm x time interaction, so that the effect row named ``arm:time``
  (the contract's name, whatever the model) is labelled by what it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trial_analysis.config import arm_levels, followup_labels, multi_arm
from trial_analysis.labels import label

CHANGE = "difference in mean change"
ADJUSTED = "adjusted difference in follow-up score"


def _has_arm_time_interaction(config: Mapping[str, Any]) -> bool:
    """Whether the primary model has an arm x time term (the effect differs by time)."""
    analysis = config.get("analysis", {})
    # A partial config (a test's) without time points is the default two-point design.
    several = bool(config.get("timepoints")) and len(followup_labels(config)) > 1
    if analysis.get("effect") == "constant" and several:
        return False
    # ANCOVA with one follow-up has one row per patient: no time term at all.
    return analysis.get("baseline") != "covariate" or several


def effect_term_label(config: Mapping[str, Any], term: Any) -> str:
    """The readable label of an effect term, naming what the model actually contains.

    ``arm:time`` is the contract's name of the primary effect row in every model; without an
    arm x time interaction it is the arm effect (ANCOVA: the arm term; change score with a
    constant effect: arm x post-baseline).
    """
    text = "" if term is None else str(term)
    effect = text == "arm:time" or text.startswith("arm:time [")
    if effect and not _has_arm_time_interaction(config):
        ancova = config.get("analysis", {}).get("baseline") == "covariate"
        name = label(config, "arm") if ancova else f"{label(config, 'arm')} × post-baseline"
        return name + text.removeprefix("arm:time")
    return label(config, text)


def design_wording(config: Mapping[str, Any]) -> dict[str, Any]:
    """The words for the configured design's estimand and model (see the module docstring).

    Keys: ``ancova``, ``mixed`` (random effects), ``mmrm``, ``clustered`` (a level other
    than patient), ``cluster_level`` (the outermost such level's label, or ""),
    ``interaction`` (arm x time term), ``quantity`` (lower case, as in "the {quantity}"),
    ``axis`` (capitalised, for an axis label), ``model`` ("linear mixed model", an MMRM or
    "linear regression"), ``model_short`` ("mixed model", "MMRM", "linear model"), ``form``
    (the primary model's form for Table S1), ``interaction_term`` (the subgroup interaction
    in words).
    """
    analysis = config.get("analysis", {})
    ancova = analysis.get("baseline") == "covariate"
    levels = [str(level) for level in analysis.get("random_effects") or []]
    clusters = [level for level in levels if level != "patient"]
    mixed = bool(levels)
    covariance = analysis.get("covariance")
    interaction = _has_arm_time_interaction(config)
    quantity = ADJUSTED if ancova else CHANGE
    if covariance:
        model = (f"mixed model for repeated measures (MMRM, "
                 f"{str(covariance).replace('_', ' ')} covariance)")
        model_short = "MMRM"
    else:
        model = "linear mixed model" if mixed else "linear regression"
        model_short = "mixed model" if mixed else "linear model"
    form = (f"lagged outcome (ANCOVA, {model_short})" if ancova
            else f"change score ({model_short})")
    arm = label(config, "arm")
    return {
        "ancova": ancova, "mixed": mixed, "mmrm": bool(covariance), "clustered": bool(clusters),
        "cluster_level": label(config, clusters[0]) if clusters else "",
        "interaction": interaction, "quantity": quantity,
        "axis": quantity[:1].upper() + quantity[1:], "model": model,
        "model_short": model_short, "form": form,
        "interaction_term": (f"{arm} × time × subgroup" if interaction
                             else f"{arm} × subgroup"),
    }


def figure_captions(config: Mapping[str, Any], base: Mapping[str, str]) -> dict[str, str]:
    """The report's figure captions with the trajectories and forest captions for this design.

    ``base`` holds the design-independent captions (flow, sessions, implementation).
    """
    words = design_wording(config)
    populations = list(config.get("analysis", {}).get("populations") or [])
    population = "complete_case" if "complete_case" in populations else (
        populations[0] if populations else "complete_case")
    when = ("at each follow-up, the baseline score held at its mean" if words["ancova"]
            else "at baseline and follow-up")
    subgroups = bool(config.get("analysis", {}).get("subgroups"))
    if multi_arm(config):
        analysis = config.get("analysis", {})
        single = analysis.get("multiplicity", "single_step") in ("single_step", "dunnett",
                                                                 "tukey")
        family = ("every pair of arms" if analysis.get("contrasts") == "all_pairs"
                  else f"each arm against {arm_levels(config)[0]}")
        return {
            **base,
            **({"flow": base["flow"].replace("the two groups",
                                             f"the {len(arm_levels(config))} arms")}
               if "flow" in base else {}),
            "trajectories": (f"Adjusted mean score by arm {when} (95% CI), from the primary "
                             f"{words['model']} with all arms in {label(config, population)}."),
            "forest": (f"Difference between arms: {words['quantity']}, {family} at the "
                       "primary follow-up, by analysis population, with "
                       + ("simultaneous 95% CI (single-step, multivariate t)." if single
                          else "95% CI (not adjusted for multiplicity).")),
        }
    return {
        **base,
        "trajectories": (f"Adjusted mean score by arm {when} (95% CI), from the primary "
                         f"{words['model']} in {label(config, population)}."),
        "forest": (f"Difference between arms: {words['quantity']} (95% CI), by analysis "
                   "population" + (" and within subgroup levels, with p-values of the test of "
                                   "heterogeneity" if subgroups else "") + "."),
    }
