"""The signature of a stress-study design: whether a summary belongs to this run's design.

The design stress study takes about an hour, so the repository commits one summary
(``docs/stress-study.json``) and the report shows it when the run has not made its own. A
committed summary may only be shown for the design it was computed for: the summary records
:func:`design_signature` of its config and study file, and the report recomputes it from the
run's. Light on purpose (yaml and hashlib only): the report step imports it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

# Config sections that cannot change a stress-study replicate: where files live, how the real
# extract is read, the report's presentation and the published values it is compared with.
UNSIGNED_SECTIONS = ("paths", "input", "report", "published")
# Keys of the study file that change how the work is split, not what it computes.
UNSIGNED_STUDY_KEYS = ("chunk_size",)


def design_signature(config: Mapping[str, Any], study: str | Path | Mapping[str, Any]) -> str:
    """SHA-256 of everything that determines the stress study's summary.

    ``config`` is the validated config as run; ``study`` the study file (or its parsed
    content). Signed: the config without :data:`UNSIGNED_SECTIONS` and the study file without
    :data:`UNSIGNED_STUDY_KEYS`, as canonical JSON. So an edited simulation, analysis or
    scenario section never borrows another design's results, while a new output folder or
    report title does not invalidate them.
    """
    if not isinstance(study, Mapping):
        study = yaml.safe_load(Path(study).read_text(encoding="utf-8")) or {}
    signed = {
        "config": {k: v for k, v in config.items() if k not in UNSIGNED_SECTIONS},
        "study": {k: v for k, v in study.items() if k not in UNSIGNED_STUDY_KEYS},
    }
    text = json.dumps(signed, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
